"""plots_page: the HTML page `dvc plots show` fills, with Vega, Vega-Lite and Vega-Embed inlined.

DVC's default page loads those three scripts from a CDN, so offline it renders nothing but the
images. `.dvc/config` points `plots.html_template` at this stage's output instead: the same page
with the JavaScript bundled by the PyPI package vl-convert-python (shipped inside its wheel, so
nothing is downloaded when the page is written or opened).
"""
from __future__ import annotations

from pathlib import Path

import vl_convert

from stages.pipeline import cli
from stages.pipeline.errors import DataError
from stages.pipeline.outputs import atomic_file
from stages.pipeline import outputs

# dvc-render fills {plot_divs} (and {refresh_tag} for `--open` auto-refresh); leaving out its
# {scripts} placeholder is what keeps the CDN <script> tags off the page.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>ddpipe plots</title>
    <script type="text/javascript">
/* {versions}: bundled by vl-convert-python {vl_convert}; wrapped in a function so that the
   bundle's top-level names cannot clash with the `var spec` of DVC's per-plot scripts */
(function () {
{bundle}
})();
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def vega_lite_5() -> str:
    """The newest Vega-Lite 5 the package bundles: DVC's templates are written against the v5 schema."""
    versions = [v for v in vl_convert.get_vegalite_versions() if v.split(".")[0] == "5"]
    if not versions:
        raise DataError(f"vl-convert-python {vl_convert.__version__} bundles no Vega-Lite 5 "
                        f"(has {vl_convert.get_vegalite_versions()}); install a version that does")
    return max(versions, key=lambda v: tuple(map(int, v.split("."))))


# The bundle's globals, with SVG as the default renderer: crisp at any zoom, text that can be searched and
# copied, and marks that are part of the page's DOM (the browser test counts them there).
EXPORTS = """window.vega = vega;
window.vegaLite = vegaLite;
window.vegaEmbed = (el, spec, opts) => vegaEmbed(el, spec, {renderer: "svg", ...opts});"""


def page() -> str:
    vl_version = vega_lite_5()
    bundle = vl_convert.javascript_bundle(snippet=EXPORTS, vl_version=vl_version)
    # The bundle goes inline: a closing script tag or one of dvc-render's placeholders inside it would break
    # the page (dvc-render replaces placeholders by plain text substitution).
    for marker in ("</script", "{plot_divs}", "{refresh_tag}", "{scripts}"):
        if marker in bundle:
            raise DataError(f"vl-convert-python {vl_convert.__version__}: its JavaScript bundle contains "
                            f"{marker!r}, which cannot be inlined into the plots page")
    versions = (f"Vega {vl_convert.get_vega_version()}, Vega-Lite {vl_version}, "
                f"Vega-Embed {vl_convert.get_vega_embed_version()}")
    # str.replace, not format: the page's CSS braces and dvc-render's placeholders stay as they are.
    return (PAGE.replace("{versions}", versions).replace("{vl_convert}", vl_convert.__version__)
            .replace("{bundle}", bundle))


def run(out: Path) -> int:
    """Write the page to `out` (atomically); its size in bytes."""
    outputs.claim("plots_page", {"--out": (out, outputs.file_kind("a plots page", ".html"))}, {})
    with atomic_file(out) as tmp:
        tmp.write_text(page(), encoding="utf-8")
    size = out.stat().st_size
    print(f"plots_page: {out} ({size / 1e6:.1f} MB)")
    return size


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="HTML template to write (see .dvc/config)")
    args = parser.parse_args()
    run(args.out)


if __name__ == "__main__":
    cli.run(main)
