#!/usr/bin/env bash
# One-step set-up used by `make demo` and `make test`: Debian packages, then .venv with the project.
# Reuses an existing .venv and reinstalls only when pyproject.toml or setup.py changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# --- Debian packages -------------------------------------------------------------------------
# libsndfile1: soundfile and fairseq2n load it at import time. espeak-ng itself comes in the
# espeakng-loader wheel, so it needs no Debian package. chromium: the browser test of
# `spiritlm serve`'s page (Playwright drives /usr/bin/chromium; its own browser download is not used).
missing=()
ldconfig -p 2>/dev/null | grep -q 'libsndfile\.so\.1' || missing+=(libsndfile1)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "[setup] missing system packages: ${missing[*]}" >&2
        echo "[setup] install them first, e.g.: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

# --- virtual environment ---------------------------------------------------------------------
"$PYTHON" - <<'PY' || { echo "[setup] Python 3.10-3.12 is required (found $($PYTHON --version 2>&1))" >&2; exit 1; }
import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
PY
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.spiritlm-install"
want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c "import spiritlm" 2>/dev/null; then
    # A first install writes ~8.4 GB (torch's CUDA build); pip's own error for a full disk comes
    # after minutes and mid-way through, so say it first, in one line.
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        free_kb=$(df -Pk "$VENV" | awk 'NR == 2 {print $4}')
        if [ -n "$free_kb" ] && [ "$free_kb" -lt $((9 * 1024 * 1024)) ]; then
            echo "[setup] $VENV needs ~9 GB free for its first install; $(df -Ph "$VENV" | awk 'NR == 2 {print $4 " free on " $6}'): free some space (old clones' .venv, /tmp) and rerun" >&2
            exit 1
        fi
    fi
    echo "[setup] installing spiritlm and its dependencies into $VENV (first time: ~8 min, ~8 GB)"
    log="$VENV/pip-install.log"
    if ! { "$VENV/bin/python" -m pip install --upgrade pip && "$VENV/bin/python" -m pip install -e '.[dev]'; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "[setup] pip install failed; full log: $log" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
echo "[setup] ready: $("$VENV/bin/python" -c 'import torch, fairseq2, spiritlm; print("torch", torch.__version__, "| fairseq2", fairseq2.__version__, "| spiritlm", spiritlm.__version__)' 2>/dev/null)"
