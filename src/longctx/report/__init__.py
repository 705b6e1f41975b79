"""The local report: summary.csv in long form, report.md and report.html with the papers' tables and plots.

Generic over evaluations: every evaluation JSON with ``metrics`` gets a table by variant x length
per metric. The first metric of an evaluation's ``metrics`` is its headline metric (a table in
the body, a plot against length); the others follow folded. Every number links to the JSON it came
from. Where the papers report the same setting (``paper_numbers``), their row sits under the
variant's, marked as the paper's. A metric an evaluation found non-finite (a diverged model; the
JSON lists it under ``diverged``) is a row with no value and status ``diverged``, shown as
"diverged", never as missing.

- ``summary``: the rows of summary.csv, and the conventions the rest share;
- ``tables``: the papers' layout, with their numbers where the setting matches (``paper_numbers``);
- ``figures``: metric by length, passkey heatmaps, search convergence;
- ``document``: report.md and report.html (``write_report``);
- ``wandb_tables``: the same tables and figures in the report's W&B run;
- ``compare``: several experiments side by side.
"""

from longctx.report.compare import compare  # noqa: F401
from longctx.report.document import Report, build_report, render_html, write_report  # noqa: F401
from longctx.report.summary import COLUMNS, ReportError, collect, read_csv, write_csv  # noqa: F401
