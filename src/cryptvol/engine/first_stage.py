"""What the first stage of a copy (a clone or a restored snapshot) does beyond any stage.

A copy's bytes, LUKS2 header included, are its source's, so at first it opens with its
source's key. Two steps make it its own, each resumable wherever a crash stops it:
- a managed copy takes its own DEK: the key store holds the new DEK beside the copy's
  current one, a keyslot for the new DEK is added, the source's keyslot removed, and only
  then does the new DEK replace the old in the key store;
- with `cloneReencrypt`, LUKS2 online reencryption gives the copy its own volume key (the
  key the data is encrypted with), so the source's header and key no longer decrypt it.
"""

from __future__ import annotations

from cryptvol.engine.reencryptions import Reencryptions
from cryptvol.errors import FailedPrecondition
from cryptvol.keys.manager import KeyManager
from cryptvol.luks import cryptsetup, reencrypt
from cryptvol.luks.cryptsetup import FormatOptions
from cryptvol.state.records import VolumeRecord
from cryptvol.state.repository import VolumeRepository
from cryptvol.system import failpoints
from cryptvol.system.secret import Secret


class FirstStage:
    def __init__(self, volumes: VolumeRepository, keys: KeyManager,
                 reencryptions: Reencryptions) -> None:
        self.volumes = volumes
        self.keys = keys
        self.reencryptions = reencryptions

    def take_own_key(self, record: VolumeRecord, device: str,
                     options: FormatOptions) -> VolumeRecord:
        """Give a managed copy its own DEK; return its record, which no longer asks for it."""
        new = self.keys.next_dek(record.id)
        if cryptsetup.is_luks(device):
            old = self.keys.get_dek(record.id)
            if not cryptsetup.test_key(device, new):
                try:
                    cryptsetup.add_key(device, old, new, options)
                except cryptsetup.WrongKey:
                    raise FailedPrecondition(
                        f"volume {record.id} was copied with a key that does not open its "
                        "LUKS2 header; the key store and the copy disagree"
                    ) from None
            failpoints.reached("rekey:after-add")
            if cryptsetup.test_key(device, old):
                cryptsetup.remove_key(device, old)
            failpoints.reached("rekey:after-remove")
        # A copy of a volume never staged is blank: its first format uses the new DEK.
        self.keys.promote_next_dek(record.id)
        return self.volumes.update(record.id, lambda r: r.model_copy(update={"rekey": False}))

    def check_restage(self, record: VolumeRecord, name: str) -> None:
        """Refuse to stage again over a mapping whose reencryption a crash interrupted: it
        recovers only by closing and opening, which needs an unstage first."""
        if (record.reencrypt == "pending" and not self.reencryptions.running(record.id)
                and reencrypt.helpers_of(name)):
            raise FailedPrecondition(
                f"the reencryption of volume {record.id} was interrupted by a crash; unstage "
                "the volume and stage it again to recover and resume it"
            )

    def reencrypt(self, record: VolumeRecord, device: str, size_bytes: int, key: Secret,
                  options: FormatOptions) -> None:
        """Start (or resume) the copy's reencryption to a new volume key, in the background;
        record it done when the header shows it finished."""
        if record.reencrypt != "pending" or self.reencryptions.running(record.id):
            return
        metadata = cryptsetup.dump_metadata(device)
        resume = reencrypt.in_progress(metadata)
        if not resume:
            digest = reencrypt.volume_key_digest(metadata)
            if record.reencrypt_from and digest != record.reencrypt_from:
                self.finished(record.id)
                return
            if not record.reencrypt_from:
                self.volumes.update(record.id, lambda r: r.model_copy(
                    update={"reencrypt_from": digest}))
        self.reencryptions.start(record.id, device, size_bytes, key, options, resume=resume)

    def finished(self, volume_id: str) -> None:
        self.volumes.update(volume_id, lambda r: r.model_copy(update={"reencrypt": "done"}))
