# The orchestra-nb runtime image: the `orchestra` command in a virtual environment.
#
#   docker build -t orchestra-nb .
#   docker build -t orchestra-nb --build-arg BASE=orchestra-base:bookworm .   # CI (.ci/docker.sh)
#   docker run --rm -p 5000:5000 orchestra-nb executor --uses runtime.executors.echo:Echo \
#       --host 0.0.0.0 --port 5000
#
# BASE: any image with python3 (3.10 to 3.12) whose `python3 -m venv` gives a pip.
# PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_TRUSTED_HOST: a package index other than PyPI, for
# the build only (empty: pip's defaults). A proxy's CA belongs in the base image (the CI base
# image has the CI machine's); the legacy builder has no build secrets.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ENV VIRTUAL_ENV=/opt/orchestra \
    PATH=/opt/orchestra/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Metadata first: steps after a COPY of the code rerun on every code change, and with the vfs
# storage driver each step costs a full copy of the file system.
WORKDIR /workspace
# --single-child: SIGTERM goes to orchestra only, which stops its replica processes itself
ENTRYPOINT ["dumb-init", "--single-child", "--", "orchestra"]
CMD ["--help"]

# Dependencies in their own layer: a change of the code alone reuses it. dumb-init is PID 1:
# it reaps orphans and passes signals on; a Python PID 1 would ignore a SIGTERM that comes
# before its handler is installed (`docker stop` during start-up would wait 10 s, then kill).
# (tomllib: Python 3.11+; on 3.10 the dependencies come with the project below.)
COPY pyproject.toml README.md /opt/orchestra-src/
RUN python3 -m venv /opt/orchestra \
 && pip install -q 'setuptools>=64' wheel 'dumb-init>=1.2.5' \
 && (python3 -c "import tomllib; print('\\n'.join(tomllib.load(open('/opt/orchestra-src/pyproject.toml', 'rb'))['project']['dependencies']))" \
     > /tmp/requirements.txt 2>/dev/null || : > /tmp/requirements.txt) \
 && pip install -q -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The project: .dockerignore lets in only pyproject.toml, README.md, runtime/, orchestra_nb/.
# Not editable; the source folder stays for tracebacks. Executor state (--workspace) and user
# code (--py-modules) go in /workspace.
COPY . /opt/orchestra-src/
RUN pip install -q --no-build-isolation /opt/orchestra-src \
 && rm -rf /opt/orchestra-src/build /opt/orchestra-src/*.egg-info \
 && orchestra --help >/dev/null
