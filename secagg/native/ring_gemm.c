/* out[a*ldo + b] += sum_k A[a*lda + k] * B[b*ldb + k]   (mod 2^64)
 *
 * The ring product Z_2^64 of secagg's 2PC: unsigned 64-bit wrap-around is exactly the
 * ring arithmetic, so no reduction step is needed. torch and numpy have no BLAS for
 * int64 and run this product about 8x slower than the tiled loop below, which gcc
 * vectorises (AVX2: three 32x32->64 multiplies per lane). The column blocking (KC) keeps
 * the 2+4 operand rows of a tile in L1/L2.
 *
 * Built by secagg/ringmath.py with the system C compiler; loaded with ctypes.
 */
#include <stdint.h>

#define KC 2048

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SECAGG_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SECAGG_CLONES
#endif

SECAGG_CLONES
void secagg_ring_gemm_nt(const uint64_t *A, int64_t lda, const uint64_t *B, int64_t ldb,
                         uint64_t *out, int64_t ldo, int64_t n1, int64_t n2, int64_t d) {
  for (int64_t k0 = 0; k0 < d; k0 += KC) {
    const int64_t kw = d - k0 < KC ? d - k0 : KC;
    int64_t a = 0;
    for (; a + 2 <= n1; a += 2) {
      const uint64_t *e0 = A + a * lda + k0, *e1 = e0 + lda;
      int64_t b = 0;
      for (; b + 4 <= n2; b += 4) {
        const uint64_t *r0 = B + b * ldb + k0, *r1 = r0 + ldb, *r2 = r1 + ldb, *r3 = r2 + ldb;
        uint64_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
        for (int64_t k = 0; k < kw; k++) {
          const uint64_t x0 = e0[k], x1 = e1[k];
          s00 += x0 * r0[k]; s01 += x0 * r1[k]; s02 += x0 * r2[k]; s03 += x0 * r3[k];
          s10 += x1 * r0[k]; s11 += x1 * r1[k]; s12 += x1 * r2[k]; s13 += x1 * r3[k];
        }
        uint64_t *o0 = out + a * ldo + b, *o1 = o0 + ldo;
        o0[0] += s00; o0[1] += s01; o0[2] += s02; o0[3] += s03;
        o1[0] += s10; o1[1] += s11; o1[2] += s12; o1[3] += s13;
      }
      for (; b < n2; b++) {
        const uint64_t *r0 = B + b * ldb + k0;
        uint64_t s0 = 0, s1 = 0;
        for (int64_t k = 0; k < kw; k++) { s0 += e0[k] * r0[k]; s1 += e1[k] * r0[k]; }
        out[a * ldo + b] += s0;
        out[(a + 1) * ldo + b] += s1;
      }
    }
    for (; a < n1; a++) {
      const uint64_t *e0 = A + a * lda + k0;
      for (int64_t b = 0; b < n2; b++) {
        const uint64_t *r0 = B + b * ldb + k0;
        uint64_t s0 = 0;
        for (int64_t k = 0; k < kw; k++) s0 += e0[k] * r0[k];
        out[a * ldo + b] += s0;
      }
    }
  }
}

/* ABI check for the loader: bump when the signature above changes. */
int64_t secagg_ring_gemm_abi(void) { return 1; }
