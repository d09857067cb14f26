# make bench: every benchmark in one run -> a Markdown table and benchmarks/results.json.
#   make bench                              # uses `uv` on PATH (or UV=/path/to/uv)
#   make bench TORCH_WHEELS=/opt/wheels     # also installs a CPU torch wheel found there
#   make bench ARGS="--quick"               # a short smoke run; ARGS="--only steps" for one part
# PyTorch is optional (the PyTorch columns are skipped without it) and is never a project
# dependency. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE force older OpenBLAS kernels: they are unset
# for the benchmark command only.

UV ?= $(shell command -v uv 2>/dev/null || echo uv)
TORCH_WHEELS ?=
ARGS ?=

.PHONY: bench
bench:
	$(UV) sync --locked --inexact
	UV=$(UV) $(UV) run --no-sync python -m benchmarks.torch_setup "$(TORCH_WHEELS)"
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(UV) run --no-sync python -m benchmarks $(ARGS)
