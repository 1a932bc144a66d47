#!/usr/bin/env bash
# Screenshot of a `snakemake --report` HTML page in headless Chromium (flags of
# ENVIRONMENT.md), opened on one result: the report is a single-page app, so a copy of it
# gets a small script that clicks the category, then the eye icon of the file.
#
#   scripts/report-screenshot.sh results/synthetic/snakemake-report.html docs/snakemake-report.png \
#       [Evaluation] [figures/response.png]
set -euo pipefail
report=${1:?usage: $0 REPORT.html OUT.png [CATEGORY] [FILE-SUFFIX]}
out=${2:?usage: $0 REPORT.html OUT.png [CATEGORY] [FILE-SUFFIX]}
category=${3:-Evaluation}
file=${4:-figures/response.png}
[ -f "$report" ] || { echo "report-screenshot: $report does not exist" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$report" "$tmp/report.html"
cat >> "$tmp/report.html" <<JS
<script>
setTimeout(() => { const a = [...document.querySelectorAll('a')].find(e => e.textContent.trim() === '$category'); if (a) a.click(); }, 1500);
setTimeout(() => { const td = [...document.querySelectorAll('td')].find(e => e.textContent.trim().endsWith('$file'));
                   if (td) td.parentElement.querySelector('a[iconname=eye]').click(); }, 3000);
</script>
JS
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$tmp/profile" --virtual-time-budget=20000 --window-size=1400,1000 \
  --screenshot="$(realpath -m "$out")" "file://$tmp/report.html" 2>/dev/null
[ -s "$out" ] || { echo "report-screenshot: chromium wrote no $out" >&2; exit 1; }
echo "wrote $out"
