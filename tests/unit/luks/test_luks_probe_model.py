"""HostProbe as data the driver caches, and what `cryptvol doctor` makes of it."""

from __future__ import annotations

from collections.abc import Callable

from cryptvol.cli.doctor import checks, overall, render_table, verdict_line
from cryptvol.luks.probe import HostProbe

MakeHost = Callable[..., HostProbe]  # the make_host fixture (conftest.py)


def test_a_probe_survives_the_state_store(make_host: MakeHost) -> None:
    host = make_host(argon2=False, cgroup_memory_limit_kib=1024)
    again = HostProbe.from_json(host.to_json())
    assert again == host
    assert not again.argon2
    assert again.pbkdf_detail("argon2id") == "Not compatible PBKDF options."


def test_usable_memory_is_the_smaller_of_node_and_cgroup(make_host: MakeHost) -> None:
    assert make_host(memory_kib=8000).usable_memory_kib == 8000
    assert make_host(memory_kib=8000, cgroup_memory_limit_kib=3000).usable_memory_kib == 3000


def test_doctor_reports_argon2_unavailable_with_what_to_do(make_host: MakeHost) -> None:
    found = {c.name: c for c in checks(make_host(argon2=False))}
    assert found["argon2"].value == "unavailable"
    assert found["argon2"].verdict == "warn"
    assert "fall back to pbkdf2" in found["argon2"].advice
    table = render_table(list(found.values()))
    assert "argon2: unavailable" in table


def test_doctor_is_content_on_a_stock_node(make_host: MakeHost) -> None:
    found = checks(
        make_host(crypto_aes_drivers=("aesni_intel",), crypto_accelerated=("aesni_intel",))
    )
    assert [c.name for c in found if c.verdict != "ok"] == []


def test_doctor_fails_a_host_without_luks2_or_dm_crypt(make_host: MakeHost) -> None:
    found = {c.name: c for c in checks(make_host(luks2=False, dm_crypt=False))}
    assert found["luks2"].verdict == "fail"
    assert found["dm-crypt"].verdict == "fail"
    assert "modprobe dm_crypt" in found["dm-crypt"].advice


def test_without_dm_crypt_the_perf_flags_are_not_called_ok(make_host: MakeHost) -> None:
    found = checks(make_host(dm_crypt=False))
    perf = next(c for c in found if c.name == "perf flags")
    assert (perf.verdict, perf.value) == ("skip", "not checked")
    assert overall(found) == "fail"
    assert verdict_line(found).startswith("verdict: FAIL (dm-crypt)")
    assert "SKIP" in render_table(found)


def test_the_overall_verdict_is_the_worst_line(make_host: MakeHost) -> None:
    assert overall(checks(make_host(keyring=False))) == "warn"
    stock = checks(make_host(crypto_aes_drivers=("aesni_intel",),
                             crypto_accelerated=("aesni_intel",)))
    assert (overall(stock), verdict_line(stock)) == ("ok", "verdict: OK")


def test_doctor_warns_about_keyring_and_old_kernel_flags(make_host: MakeHost) -> None:
    found = {c.name: c for c in checks(make_host(keyring=False, workqueue_flags=False))}
    assert found["keyring"].verdict == "warn"
    assert "dmsetup table --showkeys" in found["keyring"].advice
    assert found["perf flags"].verdict == "warn"
