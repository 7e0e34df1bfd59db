"""cryptvol keys layer: per-volume data keys, the KEKs that wrap them, and their rotation.

Key material only; the ordered store it lives in is `cryptvol.store`.

- `envelope`: a DEK wrapped with AES-256-GCM under a KEK, bound to its volume id.
- `kek`, `kek_local`, `kek_rootkey`: KEKs and the providers that hold their material.
- `keyset`: the one store record with the KEK set and the rotation stage.
- `manager`: `KeyManager` (create/get/delete a volume's DEK) and `open_local`.
- `rotation`: the stages prepare → rotate → reencrypt, by compare-and-swap.
- `replicas`, `replica`: leased replica reports, agreement, and the replica loop/process.
- `backup`: passphrase-protected export and import of the KEK set.
- `sealed`: small secrets sealed under the current KEK for the KMS plugin; `usage`: when
  each KEK was last used by a KMS plugin, which retirement honours.
- `config`: which store and provider a process uses.
- `metrics`: the key manager's prometheus metrics, on a registry passed in.
"""
