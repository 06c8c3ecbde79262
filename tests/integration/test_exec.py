"""Issue 2: `kbridge exec` against a real ipykernel, end to end."""
import json
import signal
import subprocess
import time

from conftest import kbridge_bin


def run_exec(env, *cells, args=(), timeout=120):
    proc = subprocess.run([kbridge_bin(), "exec", *args, *cells], env=env,
                          capture_output=True, text=True, timeout=timeout)
    executions = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, executions, proc.stderr


def main_text(execution):
    return next(r["text"] for r in execution["results"] if r["is_main_result"])


def test_state_is_kept_across_cells(kenv):
    rc, ex, _ = run_exec(kenv, "x = 1", "x += 1; x")
    assert rc == 0
    assert len(ex) == 2
    assert ex[0]["results"] == [] and ex[0]["error"] is None
    assert main_text(ex[1]) == "2"
    assert [e["execution_count"] for e in ex] == [1, 2]


def test_print_and_expression(kenv):
    rc, ex, err = run_exec(kenv, 'print("hello"); 6 * 7')
    assert rc == 0
    assert ex[0]["logs"] == {"stdout": ["hello\n"], "stderr": []}
    assert main_text(ex[0]) == "42"
    assert ex[0]["results"][0]["extra"] == {}
    #  The cell's stdout is passed through to our stderr as it arrives.
    assert "hello" in err


def test_stderr(kenv):
    rc, ex, _ = run_exec(kenv, "import sys; print('oops', file=sys.stderr)")
    assert rc == 0
    assert "".join(ex[0]["logs"]["stderr"]) == "oops\n"
    assert ex[0]["logs"]["stdout"] == []


def test_matplotlib_figure_is_a_png_result(kenv):
    rc, ex, _ = run_exec(kenv, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    assert rc == 0
    pngs = [r for r in ex[0]["results"] if "png" in r]
    assert len(pngs) == 1
    import base64
    data = base64.b64decode(pngs[0]["png"])
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert pngs[0]["is_main_result"] is False
    assert pngs[0]["text"].startswith("<Figure")


def test_dataframe_has_html_and_text(kenv):
    rc, ex, _ = run_exec(kenv, "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    assert rc == 0
    (result,) = ex[0]["results"]
    assert result["is_main_result"] is True
    assert "<table" in result["html"]
    assert "a" in result["text"] and "x" in result["text"]


def test_several_displays_arrive_in_order(kenv):
    code = "from IPython.display import display, HTML\n" \
           "for i in range(5): display(HTML(f'<b>{i}</b>'))\n'done'"
    rc, ex, _ = run_exec(kenv, code)
    assert rc == 0
    results = ex[0]["results"]
    assert [r["html"] for r in results[:5]] == [f"<b>{i}</b>" for i in range(5)]
    assert all(r["is_main_result"] is False for r in results[:5])
    assert results[5]["is_main_result"] is True and results[5]["text"] == "'done'"


def test_mime_fields_and_extra(kenv):
    code = ("from IPython.display import display\n"
            "display({'text/plain': 'p', 'text/markdown': '# m', 'text/latex': '$x$',\n"
            "         'image/svg+xml': '<svg/>', 'application/json': {'k': [1]},\n"
            "         'application/javascript': 'x=1', 'image/jpeg': 'AAA',\n"
            "         'application/pdf': 'JVBE', 'application/vnd.custom+json': {'z': 1}}, raw=True)")
    rc, ex, _ = run_exec(kenv, code)
    assert rc == 0
    (r,) = ex[0]["results"]
    assert r["text"] == "p" and r["markdown"] == "# m" and r["latex"] == "$x$"
    assert r["svg"] == "<svg/>" and r["json"] == {"k": [1]} and r["javascript"] == "x=1"
    assert r["jpeg"] == "AAA" and r["pdf"] == "JVBE"
    assert r["extra"] == {"application/vnd.custom+json": {"z": 1}}


def test_update_display_and_clear_output(kenv):
    code = ("from IPython.display import display, clear_output\n"
            "h = display('first', display_id=True)\n"
            "h.update('second')\n"
            "print('gone')\n"
            "clear_output()\n"
            "print('kept')\n"
            "display('after')")
    rc, ex, _ = run_exec(kenv, code)
    assert rc == 0
    assert ex[0]["logs"]["stdout"] == ["kept\n"]
    assert [r["text"] for r in ex[0]["results"]] == ["'after'"]
    rc, ex, _ = run_exec(kenv, "from IPython.display import display\n"
                               "h = display('first', display_id=True)\nh.update('second')")
    assert [r["text"] for r in ex[0]["results"]] == ["'second'"]


def test_hundred_thousand_lines_complete_and_in_order(kenv):
    rc, ex, _ = run_exec(kenv, "for i in range(100000): print(i)")
    assert rc == 0
    lines = "".join(ex[0]["logs"]["stdout"]).split("\n")
    assert lines[-1] == ""
    assert lines[:-1] == [str(i) for i in range(100000)]


def test_zero_division_error(kenv):
    rc, ex, _ = run_exec(kenv, "1/0")
    assert rc == 0
    err = ex[0]["error"]
    assert err["name"] == "ZeroDivisionError"
    assert err["value"] == "division by zero"
    assert "ZeroDivisionError" in err["traceback"] and "1/0" in err["traceback"]
    assert "\x1b[" not in err["traceback"]
    assert ex[0]["results"] == []


def test_shell_escape(kenv):
    rc, ex, _ = run_exec(kenv, "!echo hi")
    assert rc == 0
    assert "".join(ex[0]["logs"]["stdout"]).strip() == "hi"


def test_cwd(kenv, tmp_path):
    rc, ex, _ = run_exec(kenv, "import os; os.getcwd()", args=["--cwd", str(tmp_path)])
    assert rc == 0
    assert main_text(ex[0]) == repr(str(tmp_path))


def test_sigint_interrupts_the_running_cell(kenv):
    proc = subprocess.Popen([kbridge_bin(), "exec",
                             "import time\nprint('sleeping', flush=True)\ntime.sleep(60)",
                             "print('after')"],
                            env=kenv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        while "sleeping" not in seen:
            line = proc.stderr.readline()
            assert line, "kbridge exited before the cell started"
            seen += line
        # 'sleeping' came from inside the cell: it is running, and the interrupt lands in it.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        first = json.loads(proc.stdout.readline())
        elapsed = time.monotonic() - t0
        assert first["error"]["name"] == "KeyboardInterrupt"
        assert elapsed < 2.0, f"interrupt took {elapsed:.2f}s"
        second = json.loads(proc.stdout.readline())
        # ipykernel may send one print as several stream messages (its IO thread flushes
        # when it likes); the text is what must arrive, whole and in order.
        assert "".join(second["logs"]["stdout"]) == "after\n"
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_kernel_killed_mid_cell(kenv):
    t0 = time.monotonic()
    rc, ex, _ = run_exec(kenv, "import os, time\nos.kill(os.getpid(), 9)\ntime.sleep(30)",
                         "print('never')")
    elapsed = time.monotonic() - t0
    assert rc == 3
    assert ex[0]["error"]["name"] == "KernelDied"
    assert "signal 9" in ex[0]["error"]["value"]
    assert ex[1]["error"]["name"] == "KernelDied"
    assert elapsed < 10


def test_unknown_kernel_fails_to_start(kenv):
    rc, ex, err = run_exec(kenv, "1", args=["--kernel", "no-such-kernel"])
    assert rc == 1 and ex == []
    assert "no-such-kernel" in err


def test_broken_kernelspec_fails_to_start(kenv, tmp_path):
    spec = tmp_path / "jp" / "kernels" / "broken"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": ["/nonexistent/kernel", "{connection_file}"], "display_name": "B",
         "language": "python"}))
    env = dict(kenv, JUPYTER_PATH=str(tmp_path / "jp"))
    rc, ex, err = run_exec(env, "1", args=["--kernel", "broken"])
    assert rc == 1 and ex == []
    assert "could not be started" in err


def test_kernel_that_exits_at_once_fails_to_start(kenv, tmp_path):
    spec = tmp_path / "jp" / "kernels" / "quitter"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": ["/bin/sh", "-c", "exit 3", "{connection_file}"], "display_name": "Q",
         "language": "python"}))
    env = dict(kenv, JUPYTER_PATH=str(tmp_path / "jp"))
    rc, ex, err = run_exec(env, "1", args=["--kernel", "quitter"])
    assert rc == 1
    assert ex and ex[0]["error"]["name"] in ("KernelDead", "KernelDied")
    assert "exited with code 3" in err


def test_usage_errors(kenv):
    assert subprocess.run([kbridge_bin(), "exec"], env=kenv, capture_output=True).returncode == 2
    assert subprocess.run([kbridge_bin(), "bogus"], env=kenv, capture_output=True).returncode == 2


def test_signature_schemes(kenv):
    rc, ex, _ = run_exec(kenv, "'signed with sha512'", args=["--signature-scheme", "hmac-sha512"])
    assert rc == 0 and main_text(ex[0]) == "'signed with sha512'"
    rc, ex, err = run_exec(kenv, "1", args=["--signature-scheme", "hmac-md5"])
    assert rc == 2 and ex == [] and "--signature-scheme: bad value 'hmac-md5' (one of hmac-sha256, hmac-sha512)" in err
