"""Issue 14: the web console at `/` in a real browser (tests/browser/console.test.mjs, Debian's
chromium through playwright-core), against the real kbridge with isolated sandboxes; and the
console's pages as a server serves them (headers, files, the banner's URL)."""
import os
import pathlib
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import missing_tool
from kbharness import KBridge

TESTS = pathlib.Path(__file__).resolve().parents[1]
BROWSER = TESTS / "browser"
COMPAT = TESTS / "compat"


@pytest.fixture
def server(tmp_path):
    srv = KBridge(tmp_path)
    yield srv
    srv.stop()


def get(srv, path, accept="text/html"):
    req = urllib.request.Request(srv.http + path, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def banner_console_url(srv):
    first = srv.banner.splitlines()[0]
    return first.split(" listening on ", 1)[1].split(" ", 1)[0]


def test_banner_prints_the_console_url_first(server):
    assert banner_console_url(server) == f"http://127.0.0.1:{server.port}/#token={server.token}"


def test_console_pages_and_their_policy(server):
    status, hdrs, body = get(server, "/")
    assert status == 200 and hdrs["content-type"].startswith("text/html")
    csp = hdrs["content-security-policy"]
    # No inline script, nothing from elsewhere, no framing of the console.
    assert "script-src 'self';" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert "set-cookie" not in hdrs
    assert b'<script type="module" src="/console/app.js">' in body
    assert b"<script>" not in body  # no inline script in the console itself
    for name, ctype in (("app.js", "text/javascript"), ("xterm.mjs", "text/javascript"),
                        ("addon-fit.mjs", "text/javascript"), ("xterm.css", "text/css"),
                        ("console.css", "text/css")):
        status, hdrs, body = get(server, "/console/" + name, accept="*/*")
        assert status == 200 and hdrs["content-type"].startswith(ctype), (name, status, hdrs)
        assert hdrs["x-content-type-options"] == "nosniff" and len(body) > 100
    # Results' frames: sandboxed by their own policy too (opened on their own, still no origin).
    status, hdrs, body = get(server, "/console/frame.html")
    assert status == 200 and hdrs["content-security-policy"].startswith("sandbox allow-scripts;")
    assert "allow-same-origin" not in hdrs["content-security-policy"]
    # Unknown files, other methods: clear errors; the service goes on.
    assert get(server, "/console/nope.js")[0] == 404
    assert get(server, "/console/../README.md")[0] in (400, 404)
    req = urllib.request.Request(server.http + "/console/app.js", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 405
    assert get(server, "/", accept="application/json")[2].startswith(b'{"name":"kbridge"')


def png_size_and_variance(path):
    """(width, height, pixel variance) of a PNG, with matplotlib's PNG reader (Debian's)."""
    import matplotlib.image
    img = matplotlib.image.imread(str(path))
    return img.shape[1], img.shape[0], float(img[..., :3].var())


def test_console_in_a_browser(tmp_path):
    if not shutil.which("node"):
        missing_tool("node is not installed (scripts/setup.sh --test installs it)")
    if not (COMPAT / "node_modules" / "playwright-core").is_dir():
        missing_tool("tests/compat/node_modules is missing: run `npm ci` in tests/compat")
    if not any(os.path.exists(p) for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")):
        missing_tool("chromium is not installed (scripts/setup.sh --test installs it)")
    out = tmp_path / "screenshots"
    out.mkdir()
    srv = KBridge(tmp_path)
    try:
        env = dict(os.environ, KBRIDGE_CONSOLE_URL=banner_console_url(srv), KBRIDGE_URL=srv.http,
                   KBRIDGE_TOKEN=srv.token, OUT_DIR=str(out))
        proc = subprocess.run(["node", "--test", "--test-reporter=spec", "console.test.mjs"], cwd=BROWSER,
                              env=env, capture_output=True, text=True, timeout=1500)
        assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:] + srv.logs()[-5000:]
        assert "fail 0" in proc.stdout
    finally:
        srv.stop()
    shots = sorted(out.glob("*.png"))
    assert [p.stem for p in shots] == ["01-no-token", "02-wrong-token", "03-notebook", "04-files",
                                      "05-terminal", "06-status", "07-ended", "08-sandboxes"]
    for p in shots:
        w, h, var = png_size_and_variance(p)
        # Not blank: a page of one colour has no variance.
        assert w >= 1000 and h >= 600 and var > 1e-3, (p.name, w, h, var)
