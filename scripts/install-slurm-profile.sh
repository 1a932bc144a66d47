#!/usr/bin/env bash
# Install profiles/slurm as your own Snakemake profile `slurm`, with your account and
# partitions filled in, so that `snakemake --profile slurm all` works from the checkout
# (Snakemake looks profiles up in the working directory, then in
# ${XDG_CONFIG_HOME:-~/.config}/snakemake/, then in /etc/xdg/snakemake/).
#
#   scripts/install-slurm-profile.sh                      # asks for what it needs
#   scripts/install-slurm-profile.sh --account proj123 --partition cpu \
#       --gpu-partition gpu [--gpu-model a100] [--force]
#
# Options (or environment variables, for non-interactive use):
#   --account A        MDIFF_SLURM_ACCOUNT        account charged (sbatch -A)
#   --no-account       MDIFF_SLURM_NO_ACCOUNT=1   the cluster has no accounts
#   --partition P      MDIFF_SLURM_PARTITION      partition of the CPU jobs
#   --gpu-partition G  MDIFF_SLURM_GPU_PARTITION  partition of train/rollout (default: P)
#   --gpu-model M      MDIFF_SLURM_GPU_MODEL      GPU model for --gpus=M:n (default: none)
#   --name N           MDIFF_SLURM_PROFILE_NAME   profile name (default: slurm)
#   --force                                       replace an existing profile of that name
# What is missing is asked for when stdin is a terminal; otherwise it is an error.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)/profiles/slurm/config.yaml"
account=${MDIFF_SLURM_ACCOUNT-}
no_account=${MDIFF_SLURM_NO_ACCOUNT:-0}
partition=${MDIFF_SLURM_PARTITION-}
gpu_partition=${MDIFF_SLURM_GPU_PARTITION-}
gpu_model=${MDIFF_SLURM_GPU_MODEL-}
name=${MDIFF_SLURM_PROFILE_NAME:-slurm}
force=0

die() { echo "install-slurm-profile: $*" >&2; exit 1; }
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --account) account=${2?--account needs a value}; shift 2 ;;
    --no-account) no_account=1; shift ;;
    --partition) partition=${2?--partition needs a value}; shift 2 ;;
    --gpu-partition) gpu_partition=${2?--gpu-partition needs a value}; shift 2 ;;
    --gpu-model) gpu_model=${2?--gpu-model needs a value}; shift 2 ;;
    --name) name=${2?--name needs a value}; shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "install-slurm-profile: unknown option $1" >&2; usage 2 ;;
  esac
done

[ -f "$SRC" ] || die "profile template $SRC not found"

ask() {  # ask VAR "question" [default]: prompt on a terminal, fail otherwise
  local var=$1 question=$2 default=${3-} answer
  [ -t 0 ] || die "$question: not given (pass it as an option or environment variable, see --help)"
  if [ -n "$default" ]; then
    read -r -p "$question [$default]: " answer
    answer=${answer:-$default}
  else
    read -r -p "$question: " answer
  fi
  [ -n "$answer" ] || die "$question: an answer is needed"
  printf -v "$var" '%s' "$answer"
}

if [ "$no_account" != 1 ] && [ -z "$account" ]; then
  ask account "Slurm account to charge (sbatch -A)"
fi
[ -n "$partition" ] || ask partition "Slurm partition for CPU jobs (sbatch -p)"
if [ -z "$gpu_partition" ]; then
  if [ -t 0 ]; then ask gpu_partition "Slurm partition for GPU jobs" "$partition"; else gpu_partition=$partition; fi
fi

# Values go into YAML strings and sbatch arguments: allow only Slurm-name characters.
for pair in "account:$account" "partition:$partition" "gpu-partition:$gpu_partition" \
  "gpu-model:$gpu_model" "name:$name"; do
  value=${pair#*:}
  if [ -n "$value" ] && ! [[ "$value" =~ ^[A-Za-z0-9_.,-]+$ ]]; then
    die "${pair%%:*} '$value': only letters, digits and . _ , - are allowed"
  fi
done

dest_dir="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake/$name"
dest="$dest_dir/config.yaml"
if [ -e "$dest" ] && [ "$force" != 1 ]; then
  die "$dest exists; pass --force to replace it"
fi
mkdir -p "$dest_dir"
tmp=$(mktemp "$dest_dir/.config.yaml.XXXXXX")
trap 'rm -f "$tmp"' EXIT

{
  echo "# Installed by mdiff scripts/install-slurm-profile.sh from $SRC on $(date -u +%F)."
  echo "# Use it from the mdiff checkout: snakemake --profile $name all"
  sed \
    -e "s/\"CHANGE_ME_gpu_partition\"/\"$gpu_partition\"/" \
    -e "s/\"CHANGE_ME_cpu_partition\"/\"$partition\"/" \
    "$SRC" |
    if [ "$no_account" = 1 ]; then
      # No -A at all, and tell the plugin not to look for an account.
      sed -e '/slurm_account: "CHANGE_ME_account"/d' -e '/# Account charged for the jobs/d' \
        -e 's/^# --- Settings of the Slurm executor plugin.*/&\n# The cluster has no accounts: submit without -A.\nslurm-no-account: true/'
    else
      sed -e "s/\"CHANGE_ME_account\"/\"$account\"/"
    fi |
    if [ -n "$gpu_model" ]; then
      sed -e "s/^    # gpu_model: \"a100\"/    gpu_model: \"$gpu_model\"/"
    else
      cat
    fi
} >"$tmp"

if grep -q "\"CHANGE_ME_" "$tmp"; then
  die "placeholders left in the profile (template changed?): $(grep -n "\"CHANGE_ME_" "$tmp" | head -3)"
fi
chmod 644 "$tmp"
mv -f "$tmp" "$dest"
trap - EXIT
echo "installed Snakemake profile '$name': $dest"
echo "run from the mdiff checkout: snakemake --profile $name all"
