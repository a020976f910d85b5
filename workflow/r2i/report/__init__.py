"""The run report (rules/report.smk, ``snakemake --report``): figures, the example gallery, cost
and run facts, and headless-Chromium screenshots of the rendered report."""
