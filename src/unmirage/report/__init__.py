"""Reports across evaluation runs: the paper-style table, a grouped bar chart, report.md and report.html."""

from unmirage.report.build import build_report, html_report, markdown_report
from unmirage.report.chart import bar_chart
from unmirage.report.summary import RunSummary, load_run

__all__ = ["RunSummary", "bar_chart", "build_report", "html_report", "load_run", "markdown_report"]
