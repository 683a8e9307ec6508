"""The HTML report's page: the document shell, its stylesheet, and the sections in order.

Its own module so that the order of the sections and the one inline stylesheet live in
one short place, apart from the code that renders each section.
"""

from __future__ import annotations

from html import escape

from shardc.plan.model import PlanData
from shardc.report.html.map import _topology
from shardc.report.html.tables import _breakdown, _header, _memory, _stages
from shardc.report.html.timeline import _timeline
from shardc.topology.model import Topology

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f1f5f9;color:#0f172a;
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1380px;margin:0 auto;padding:20px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 10px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:16px 18px;
 margin:0 0 16px}
.sub{color:#475569;margin:0 0 12px}
.note{color:#64748b;font-size:12.5px;margin:6px 0 0}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:8px}
.fact{background:#f8fafc;border:1px solid #e2e8f0;border-radius:6px;padding:8px 10px}
.fact b{display:block;color:#64748b;font-size:11.5px;font-weight:600;text-transform:uppercase;
 letter-spacing:.03em}
.fact span{font-size:15px;font-weight:600;overflow-wrap:anywhere}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12.5px;color:#fff}
.ok{background:#16a34a}.warn{background:#d97706}.bad{background:#dc2626}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #e2e8f0;text-align:left;white-space:nowrap}
th{font-size:12px;color:#475569;background:#f8fafc}
td.num,th.num{text-align:right}
.bar{position:relative;display:inline-block;width:160px;height:12px;background:#e2e8f0;
 border-radius:3px;vertical-align:middle;margin-right:8px;overflow:hidden}
.bar i{position:absolute;left:0;top:0;bottom:0;border-radius:3px}
.bar u{position:absolute;top:0;bottom:0;width:2px;background:#0f172a}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;
 margin-right:6px;border:1px solid rgba(0,0,0,.25)}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;margin:8px 0 0;font-size:13px}
.scroll{overflow-x:auto}
.cols{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
"""


def render_html(plan: PlanData, topology: Topology, *, model: str | None = None) -> str:
    """The report page for a typed Plan (its partition, ranks and timeline) and the cluster
    it was planned for.

    ``model`` names the model in the header; by default the file name the plan records.
    The plan must hold its timeline (a compiled, lowered plan, or a folder with its
    schedule.json), or be a serving plan (its page: :mod:`.serving`).
    """
    if model is None and plan.inputs is not None:
        path = plan.inputs.model.path
        model = path.replace("\\", "/").rsplit("/", 1)[-1] if path else None
    title = f"shardc plan: {model}" if model else "shardc plan"
    if plan.serving is not None:
        from shardc.report.html.serving import render_serving_html

        return render_serving_html(plan, topology, f"shardc serving plan: {model or '-'}", _CSS,
                                   model)
    if plan.timeline is None:
        raise ValueError("the report needs the plan's timeline (compile with --emit)")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)} on {escape(topology.name)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        _header(plan, topology, title, model),
        _stages(plan),
        '<div class="cols">',
        _breakdown(plan),
        _memory(plan, topology),
        "</div>",
        _timeline(plan),
        _topology(plan, topology),
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"
