"""The campaign report: one self-contained ``report.html`` (hull, discovery curves, surrogate and
CHGNet parity, generator yields, top structures, failures, settings) read from a campaign folder
alone. ``discovery report DIR`` writes it; every ``discovery run`` writes it at its end.

Modules: `data` (what the report shows, from the ledger), `figures` (matplotlib, PNG bytes),
`html` (the page).
"""

from discovery.campaign_report.html import REPORT_NAME, try_write_report, write_report

__all__ = ["REPORT_NAME", "try_write_report", "write_report"]
