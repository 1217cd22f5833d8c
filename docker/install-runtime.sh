#!/bin/sh
# Install the linewatch edge runtime into a new virtual env: numpy, OpenCV (headless), onnxruntime and
# linewatch's runtime + CLI. No torch, no training, export or job code.
#
# usage: docker/install-runtime.sh VENV [SRC]
#   VENV  virtual env to create (must not exist), e.g. /opt/linewatch
#   SRC   the linewatch source tree (default: this script's parent folder)
#   PYTHON (environment) the interpreter that creates the env (default: python3)
#
# This is the one install recipe: Dockerfile.edge runs it, and tests/test_edge_env.py runs it to build
# and inspect the same environment without a Docker engine. The dependency set is
# requirements-runtime.txt, which pyproject.toml also reads as linewatch's core dependencies.
set -eu

VENV=${1:?usage: install-runtime.sh VENV [SRC]}
SRC=${2:-$(cd "$(dirname "$0")/.." && pwd)}
PYTHON=${PYTHON:-python3}

if [ -e "$VENV" ]; then
    echo "install-runtime.sh: $VENV already exists; give a new folder for the virtual env" >&2
    exit 1
fi
for f in pyproject.toml requirements-runtime.txt runtime/inspector.py linewatch/cli.py; do
    if [ ! -f "$SRC/$f" ]; then
        echo "install-runtime.sh: $SRC/$f is missing; pass the linewatch source tree as SRC" >&2
        exit 1
    fi
done

"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

# 1. the runtime's third-party dependencies, exactly requirements-runtime.txt
$PIP install -r "$SRC/requirements-runtime.txt"

# 2. linewatch itself, without dependencies (its core dependencies are the file above; torch is only in
#    the optional `train` extra). Built from a copy of the package sources, so the source tree stays clean.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
cp "$SRC"/pyproject.toml "$SRC"/README.md "$SRC"/requirements-*.txt "$STAGE"/
for d in linewatch runtime training export jobs; do
    mkdir -p "$STAGE/$d"
    (cd "$SRC" && find "$d" -name '*.py' -exec cp --parents {} "$STAGE"/ \;)
done
$PIP install --no-deps "$STAGE"

# 3. drop the training side: the edge runs `linewatch inspect` (linewatch.runtime and the CLI) only
SITE=$("$VENV/bin/python" -I -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/linewatch
if [ ! -f "$SITE/runtime/inspector.py" ]; then
    echo "install-runtime.sh: linewatch was not installed where expected ($SITE)" >&2
    exit 1
fi
rm -rf "$SITE/training" "$SITE/export" "$SITE/jobs"

# 4. pip and setuptools are not needed at run time (about 20 MB)
$PIP uninstall -q -y pip setuptools 2>/dev/null || $PIP uninstall -q -y pip
echo "install-runtime.sh: linewatch edge runtime installed in $VENV"
