#!/bin/bash
# Pose latency of two revisions on this machine, interleaved so machine drift hits both alike:
#   bash bench/tools/compare_revisions.sh OLD_REV NEW_REV [PRESET] [ROUNDS] [PATH] > bench/revisions.md
# Each revision is checked out in a temporary worktree and measured by bench/tools/revision_probe.py
# (same random inputs, its own decode path): PATH torch (eager, default) or ort (ONNX Runtime fp32), ROUNDS rounds (default 5), one line per run, then
# each revision's medians.
set -euo pipefail
old=$1 new=$2 preset=${3:-default} rounds=${4:-5} path=${5:-torch}
root=$(git rev-parse --show-toplevel)
py=$root/.venv/bin/python
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/old" 2>/dev/null; git -C "$root" worktree remove --force "$tmp/new" 2>/dev/null; rm -rf "$tmp"' EXIT
git -C "$root" worktree add -q --detach "$tmp/old" "$old"
git -C "$root" worktree add -q --detach "$tmp/new" "$new"
echo "# Pose latency, $old against $new ($preset, $path)"
echo
echo "Written by \`bash bench/tools/compare_revisions.sh $old $new $preset $rounds $path\` on $(nproc) cores, $(date -u +%Y-%m-%d), load average $(cut -d' ' -f1 /proc/loadavg) at start; the revisions alternate, each row a fresh process (bench/tools/revision_probe.py: prefill and decode/token from each revision's gst_model.bench._micro, which before the one-loop rewrite timed the prefill cache's own decode (not the shared-prompt cache that generation uses) and after it times the decoder that generation uses, cache set-up included, so compare those two columns within a revision only; the poses, top-k 100 sampling on random images, are the like-for-like figures)."
echo
echo "| revision | round | prefill ms | decode ms/token | pose N=1 s | pose N=16 s |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
  for rev in old new; do
    line=$(cd "$tmp/$rev" && PYTHONPATH="$tmp/$rev" "$py" "$root/bench/tools/revision_probe.py" "$preset" "$path" | grep '^PROBE ')
    echo "$rev ${line#PROBE }" >> "$tmp/probes"
    "$py" -c "import json, sys; r = json.loads(sys.argv[1][6:]); print(f\"| {sys.argv[2]} | {sys.argv[3]} | {r['prefill_s'] * 1e3:.1f} | {r['decode_s'] * 1e3:.2f} | {r['pose1_s']:.2f} | {r['pose16_s']:.2f} |\")" "$line" "$( [ $rev = old ] && echo "$old" || echo "$new")" "$round"
  done
done
echo
echo "Medians over the rounds:"
echo
echo "| revision | prefill ms | decode ms/token | pose N=1 s | pose N=16 s |"
echo "|---|---|---|---|---|"
"$py" - "$tmp/probes" "$old" "$new" <<'PY'
import json, statistics, sys
runs = [line.split(" ", 1) for line in open(sys.argv[1])]
for rev, name in (("old", sys.argv[2]), ("new", sys.argv[3])):
    rows = [json.loads(r) for k, r in runs if k == rev]
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    print(f"| {name} | {med['prefill_s'] * 1e3:.1f} | {med['decode_s'] * 1e3:.2f} | {med['pose1_s']:.3f} | {med['pose16_s']:.3f} |")
PY
