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
#include <stdlib.h>

#define KC 2048

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SECAGG_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SECAGG_CLONES
#endif

/* One column block: out += A[:, :kw] @ B[:, :kw]^T. Inlined into each entry point so
 * that it is compiled for each target clone. */
static inline __attribute__((always_inline)) void block_nt(
    const uint64_t *A, int64_t lda, const uint64_t *B, int64_t ldb, uint64_t *out,
    int64_t ldo, int64_t n1, int64_t n2, int64_t kw) {
  int64_t a = 0;
  for (; a + 2 <= n1; a += 2) {
    const uint64_t *e0 = A + a * lda, *e1 = e0 + lda;
    int64_t b = 0;
    for (; b + 4 <= n2; b += 4) {
      const uint64_t *r0 = B + b * ldb, *r1 = r0 + ldb, *r2 = r1 + ldb, *r3 = r2 + ldb;
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
      const uint64_t *r0 = B + b * ldb;
      uint64_t s0 = 0, s1 = 0;
      for (int64_t k = 0; k < kw; k++) { s0 += e0[k] * r0[k]; s1 += e1[k] * r0[k]; }
      out[a * ldo + b] += s0;
      out[(a + 1) * ldo + b] += s1;
    }
  }
  for (; a < n1; a++) {
    const uint64_t *e0 = A + a * lda;
    for (int64_t b = 0; b < n2; b++) {
      const uint64_t *r0 = B + b * ldb;
      uint64_t s0 = 0;
      for (int64_t k = 0; k < kw; k++) s0 += e0[k] * r0[k];
      out[a * ldo + b] += s0;
    }
  }
}

SECAGG_CLONES
void secagg_ring_gemm_nt(const uint64_t *A, int64_t lda, const uint64_t *B, int64_t ldb,
                         uint64_t *out, int64_t ldo, int64_t n1, int64_t n2, int64_t d) {
  for (int64_t k0 = 0; k0 < d; k0 += KC) {
    const int64_t kw = d - k0 < KC ? d - k0 : KC;
    block_nt(A + k0, lda, B + k0, ldb, out, ldo, n1, n2, kw);
  }
}

/* B as int8 (the validation's {-1, 0, 1} projections: 8x less memory than int64).
 * Each column block of B is sign-extended into a small scratch (n2 x KC words, in
 * cache) and multiplied by the uint64 loop. Returns 0, or -1 if the scratch could not
 * be allocated (the caller falls back). */
#define KC8 1024
SECAGG_CLONES
int64_t secagg_ring_gemm_nt_i8(const uint64_t *A, int64_t lda, const int8_t *B, int64_t ldb,
                               uint64_t *out, int64_t ldo, int64_t n1, int64_t n2,
                               int64_t d) {
  uint64_t *scratch = (uint64_t *)malloc((size_t)(n2 > 0 ? n2 : 1) * KC8 * sizeof(uint64_t));
  if (scratch == NULL) return -1;
  for (int64_t k0 = 0; k0 < d; k0 += KC8) {
    const int64_t kw = d - k0 < KC8 ? d - k0 : KC8;
    for (int64_t b = 0; b < n2; b++) {
      const int8_t *src = B + b * ldb + k0;
      uint64_t *dst = scratch + b * KC8;
      for (int64_t k = 0; k < kw; k++) dst[k] = (uint64_t)(int64_t)src[k];
    }
    block_nt(A + k0, lda, scratch, KC8, out, ldo, n1, n2, kw);
  }
  free(scratch);
  return 0;
}

/* ABI check for the loader: bump when the signature above changes. */
int64_t secagg_ring_gemm_abi(void) { return 3; }
