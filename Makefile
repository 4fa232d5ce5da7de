# Convenience entry points; ./run is the real one (it also does the set-up).
#   make test                           lint, type check, the whole test suite
#   make test-kernels                   the qemu kernel matrix (5.10, 6.1, 6.12)
#   make test-kernels KERNELS=6.1       one kernel line
#   make test-kernels LANES=1           one guest at a time (busy machine)
KERNELS ?= 5.10 6.1 6.12
LANES ?= 2

.PHONY: test test-kernels demo setup
test:
	./run test

test-kernels:
	./run test-kernels --kernels $(KERNELS) --lanes $(LANES)

demo:
	./run demo

setup:
	./run setup
