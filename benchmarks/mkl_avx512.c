/* Loaded with LD_PRELOAD into PyTorch's process by bench_train.py --tuned-pytorch: MKL asks
 * mkl_serv_intel_cpu_true() whether the CPU is Intel before taking its AVX-512 kernels; on AMD
 * it says no and MKL runs its AVX2 code. Answering yes gives MKL's AVX-512 path (the
 * "hand-tuned PyTorch" of the benchmarks). */
int mkl_serv_intel_cpu_true(void) { return 1; }
