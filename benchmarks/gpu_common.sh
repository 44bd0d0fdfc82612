# Sourced by the gpu_*.sh scripts: prints the machine and makes carried wheels importable.
# Needs PYTHON set. Wheels for packages the device image lacks (pycocotools, pydensecrf2, ...)
# can be carried in .whl/ at the repository root; they are installed into /tmp/site, which
# comes first on PYTHONPATH (so a carried setuptools >= 77 is the one the
# --no-build-isolation builds use: pyproject.toml's SPDX license string needs it).

echo "== machine"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
echo "CPUs: $(nproc)"

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  if [ ! -e /tmp/site/.hassod-wheels ]; then  # once per machine (gpu_all.sh runs several scripts)
    echo "== installing the carried wheels into /tmp/site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    touch /tmp/site/.hassod-wheels
  fi
  case ":${PYTHONPATH:-}:" in
    *:/tmp/site:*) ;;
    *) export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} ;;
  esac
fi

# require_modules MODULE...: exit with a clear message when one cannot be imported.
require_modules() {
  "$PYTHON" - "$@" <<'PY'
import importlib.util, sys
missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (carry wheels in .whl/, see the header)")
PY
}

# build_if_missing: build hassod's CPU module in place when it does not import (a bare copy of
# the working tree; gpu_all.sh builds with CUDA first, so this is for the scripts run alone).
build_if_missing() {
  if ! "$PYTHON" -c "import hassod._C" 2>/dev/null; then
    echo "== build (CPU module, in place)"
    local start=$SECONDS
    HASSOD_CUDA=0 "$PYTHON" -m pip install -e . --no-build-isolation --no-deps -q
    echo "built in $((SECONDS - start)) s"
  fi
}
