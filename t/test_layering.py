"""The layering DESIGN.md asks for, checked on the source: the engine (src/)
never includes nginx, and the glue (ngx_http_sse_module/) never reaches the
zone's private layout; it goes through a session or store::peek_*."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
GLUE = sorted((ROOT / "ngx_http_sse_module").glob("*.[ch]pp"))
ENGINE = sorted((ROOT / "src").glob("*.[ch]pp"))


def test_the_glue_does_not_include_the_zone_layout():
    assert GLUE
    offenders = [p.name for p in GLUE if "store_layout.hpp" in p.read_text()]
    assert offenders == []


def test_the_glue_names_no_field_of_the_zone_root():
    # zone_root is an incomplete type to the glue, so the compiler refuses
    # its fields; this catches a cast around that too.
    pattern = re.compile(r"root(\(\))?->\w")
    offenders = [f"{p.name}: {m.group(0)}" for p in GLUE
                 for m in pattern.finditer(p.read_text())]
    assert offenders == []


def test_the_engine_does_not_include_nginx():
    assert ENGINE
    offenders = [p.name for p in ENGINE
                 if re.search(r'#include\s*[<"]ngx_', p.read_text())]
    assert offenders == []
