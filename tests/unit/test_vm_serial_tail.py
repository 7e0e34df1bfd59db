from cryptvol.vm.boot import serial_tail


def test_the_tail_keeps_the_last_lines(tmp_path):
    log = tmp_path / "serial.log"
    log.write_text("\n".join(f"line {i}" for i in range(50)))
    assert serial_tail(log, 3).splitlines() == ["line 47", "line 48", "line 49"]


def test_a_panic_reason_pushed_out_by_its_stack_trace_stays_on_top(tmp_path):
    log = tmp_path / "serial.log"
    log.write_text("[ 6.1] Kernel panic - not syncing: Attempted to kill init!\n"
                   + "\n".join(f"[ 6.2]  frame {i}" for i in range(80)))
    lines = serial_tail(log, 10).splitlines()
    assert lines[0].endswith("Attempted to kill init!")
    assert lines[-1] == "[ 6.2]  frame 79"


def test_a_missing_log_gives_an_empty_tail(tmp_path):
    assert serial_tail(tmp_path / "absent.log") == ""
