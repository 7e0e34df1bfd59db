"""`cryptvol serve`'s Kata settings: defaults are Kata's own folders and `kata*` handlers."""

from pathlib import Path

import pytest

from cryptvol.cli.config import ServeSettings, load_config_file
from cryptvol.errors import InvalidArgument


def test_the_defaults_are_katas_folders_and_the_kata_handler_pattern():
    kata = ServeSettings().kata_settings()
    assert kata.direct_volumes_dir == Path("/run/kata-containers/shared/direct-volumes")
    assert (kata.go_sandboxes_dir, kata.rs_sandboxes_dir) == \
        (Path("/run/vc/sbs"), Path("/run/kata"))
    assert kata.runtime_handlers == ("kata*",)
    assert kata.kubeconfig is None


def test_handlers_are_a_list_and_empty_turns_the_trigger_off(tmp_path):
    config = tmp_path / "cryptvol.toml"
    config.write_text('[serve]\nkata_runtime_handlers = "kata-qemu, kata-clh"\n')
    table = load_config_file(config)
    settings = ServeSettings.model_validate(table)
    assert settings.kata_settings().runtime_handlers == ("kata-qemu", "kata-clh")
    assert ServeSettings(kata_runtime_handlers="").kata_settings().runtime_handlers == ()


@pytest.mark.parametrize("dirs", ["/run/vc/sbs", "run/vc/sbs,/run/kata", "/a,/b,/c"])
def test_sandbox_dirs_are_two_absolute_folders(dirs):
    with pytest.raises(InvalidArgument, match="two absolute folders"):
        ServeSettings(kata_sandbox_dirs=dirs).kata_settings()
