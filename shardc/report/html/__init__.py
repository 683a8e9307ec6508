"""The plan as one self-contained HTML page: the tables of ``shardc compile``, the timeline
of one training step, and where the plan sits on the cluster.

One file that opens anywhere, offline and years later: nothing is fetched (no CDN, fonts
or scripts), every picture is inline SVG and every bar inline CSS, so a report attached to
a ticket or archived beside its plan.json still renders. The page is a pure function of
its inputs (the same plan, schedule and topology give the same string), so reports can
be diffed and kept as test fixtures.

The header and tables read the fields :mod:`shardc.report.plan` prints, formatted the
same way, so the page and the terminal never disagree. The topology picture is the one
:mod:`shardc.topology.svg` draws, with the placement and the link load painted over it.

The page is put together in :mod:`.page`, from the sections :mod:`.tables` (the header,
stages, time breakdown and memory), :mod:`.timeline` (one training step) and :mod:`.map`
(the topology with the placement and link load); :mod:`.common` holds the colours and
small formatting helpers they share.
"""

from shardc.report.html.page import render_html

__all__ = ["render_html"]
