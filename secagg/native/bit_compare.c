/* Bit-sliced layers of secagg's secure comparison (secagg/compare.py has the protocol).
 *
 * Each value's 64-bit masked opening c = x + r is compared with the XOR-shared bits of
 * the dealer's r by a carry-lookahead (prefix-AND) tree over (generate, propagate)
 * pairs. One value's pairs of one tree level live in one machine word, so a tree level
 * is a handful of word operations per value; the AND gates of a level are one packed
 * Beaver-triple opening of w bits per value (w = 32, 16, 8, 4, 2 for levels 2..6;
 * level 1 is local thanks to the dealer's pairwise products of r's bits).
 *
 * Packed streams: value i's w bits occupy bits [i*w, (i+1)*w) of a byte buffer, low
 * bits first (for w >= 8 that is a little-endian uint{w} array). Arithmetic is mod 2^64
 * on uint64_t, i.e. exactly the ring Z_2^64. Every kernel processes one block of n
 * values (n a multiple of 64, checked by the caller) in one pass over its operands.
 *
 * Built by secagg/ringmath.py with the system C compiler; loaded with ctypes.
 */
#include <stdint.h>
#include <string.h>

#define LOW63 0x7FFFFFFFFFFFFFFFULL
#define CHUNK 1024 /* values per inner chunk: the level's AND outputs stay in L1 */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SECAGG_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SECAGG_CLONES
#endif

/* even-indexed bits of x, compressed into the low half (bit 2j -> bit j) */
static inline __attribute__((always_inline)) uint64_t even64(uint64_t x) {
  x &= 0x5555555555555555ULL;
  x = (x | (x >> 1)) & 0x3333333333333333ULL;
  x = (x | (x >> 2)) & 0x0F0F0F0F0F0F0F0FULL;
  x = (x | (x >> 4)) & 0x00FF00FF00FF00FFULL;
  x = (x | (x >> 8)) & 0x0000FFFF0000FFFFULL;
  x = (x | (x >> 16)) & 0x00000000FFFFFFFFULL;
  return x;
}

static inline __attribute__((always_inline)) uint64_t ld(const uint8_t *p, int64_t i, int64_t w) {
  switch (w) {
    case 32: { uint32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    case 16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case 8: return p[i];
    case 4: return (uint64_t)(p[i >> 1] >> (4 * (i & 1))) & 0xF;
    case 2: return (uint64_t)(p[i >> 2] >> (2 * (i & 3))) & 0x3;
    default: return (uint64_t)(p[i >> 3] >> (i & 7)) & 1;
  }
}

/* sub-byte widths OR into a zeroed buffer */
static inline __attribute__((always_inline)) void st(uint8_t *p, int64_t i, int64_t w, uint64_t v) {
  switch (w) {
    case 32: { uint32_t u = (uint32_t)v; memcpy(p + 4 * i, &u, 4); return; }
    case 16: { uint16_t u = (uint16_t)v; memcpy(p + 2 * i, &u, 2); return; }
    case 8: p[i] = (uint8_t)v; return;
    case 4: p[i >> 1] |= (uint8_t)(v << (4 * (i & 1))); return;
    case 2: p[i >> 2] |= (uint8_t)(v << (2 * (i & 3))); return;
    default: p[i >> 3] |= (uint8_t)((v & 1) << (i & 7)); return;
  }
}

/* AND operands of the next level from w-bit (G, P) words of groups 0..w-1:
 * X = P_hi | P_hi << h, Y = G_lo | P_lo << h (h = w/2); keeps G_hi for the finish. */
static inline __attribute__((always_inline)) void prep(uint64_t g, uint64_t p, int64_t w, uint64_t *x, uint64_t *y,
                        uint64_t *ghi) {
  const int64_t h = w / 2;
  const uint64_t phi = even64(p >> 1);
  *x = phi | (phi << h);
  *y = even64(g) | (even64(p) << h);
  *ghi = even64(g >> 1);
}

/* Level 0 and 1 (local): from public c, this party's shares rb of r's bits and rr of
 * the dealer's pairwise products r_{2j+1} & r_{2j} (of r with bit 63 cleared), the
 * 32-bit (G, P) of 32 bit pairs, with c63 ^ r63 folded into the top group's G (it only
 * ever enters by XOR). Writes the masked AND operands of level 2 (d then e, 4n bytes
 * each) and G_hi. */
SECAGG_CLONES
void secagg_cmp_level1(int64_t n, int64_t party0, const uint64_t *c, const uint64_t *rb,
                       const uint8_t *rr, const uint8_t *a2, const uint8_t *b2, uint8_t *de,
                       uint16_t *ghi) {
  uint8_t *d = de, *e = de + 4 * n;
  const uint64_t k0 = party0 ? ~0ULL : 0ULL;
  for (int64_t i = 0; i < n; i++) {
    const uint64_t nc = ~(c[i] & LOW63), r = rb[i] & LOW63;
    const uint64_t q = ld(rr, i, 32);
    const uint64_t rlo = even64(r), rhi = even64(r >> 1);
    const uint64_t nlo = even64(nc), nhi = even64(nc >> 1);
    uint64_t g = (rhi & nhi) ^ (nlo & (q ^ (nhi & rlo)));
    const uint64_t p = q ^ (nlo & rhi) ^ (nhi & rlo) ^ (k0 & nhi & nlo);
    g ^= (((k0 & c[i]) ^ rb[i]) >> 63) << 31;
    uint64_t x, y, gh;
    prep(g, p, 32, &x, &y, &gh);
    st(d, i, 32, x ^ ld(a2, i, 32));
    st(e, i, 32, y ^ ld(b2, i, 32));
    ghi[i] = (uint16_t)gh;
  }
}

/* Finish the AND level of width w (Beaver: z = c ^ d&b ^ e&a ^ [party0] d&e with the
 * opened d, e), combine the groups, and start the next level: its masked operands
 * (d then e, n*w/16 bytes each) into out, or, after the last level (w == 2), this
 * party's XOR share of the comparison bit packed 8 per byte into out (n/8 bytes).
 * ghi is read and rewritten. The body is inlined per width so that every shift and
 * mask is a constant (the loops vectorise). */
static inline __attribute__((always_inline)) void level_w(
    int64_t n, const int64_t w, int64_t party0, const uint8_t *mine, const uint8_t *theirs,
    const uint8_t *a, const uint8_t *b, const uint8_t *c, uint16_t *ghi,
    const uint8_t *a_next, const uint8_t *b_next, uint8_t *out) {
  const int64_t len = n * w / 8, h = w / 2;
  const uint8_t k0 = party0 ? 0xFF : 0;
  const uint8_t *dm = mine, *em = mine + len, *dt = theirs, *et = theirs + len;
  uint8_t z[CHUNK * 4];
  const int64_t out_len = h == 1 ? n / 8 : n * h / 8;
  if (h < 8) memset(out, 0, (size_t)(h == 1 ? out_len : 2 * out_len));
  uint8_t *dn = out, *en = out + out_len;
  for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
    const int64_t i1 = i0 + CHUNK < n ? i0 + CHUNK : n;
    const int64_t b0 = i0 * w / 8, b1 = i1 * w / 8;
    for (int64_t k = b0; k < b1; k++) {
      const uint8_t dd = dm[k] ^ dt[k], ee = em[k] ^ et[k];
      z[k - b0] = c[k] ^ (dd & b[k]) ^ (ee & a[k]) ^ (k0 & dd & ee);
    }
    for (int64_t i = i0; i < i1; i++) {
      const uint64_t zz = ld(z, i - i0, w);
      const uint64_t g = (uint64_t)ghi[i] ^ (zz & ((1ULL << h) - 1));
      if (h == 1) {
        st(out, i, 1, g);
        continue;
      }
      const uint64_t p = zz >> h;
      uint64_t x, y, gh;
      prep(g, p, h, &x, &y, &gh);
      st(dn, i, h, x ^ ld(a_next, i, h));
      st(en, i, h, y ^ ld(b_next, i, h));
      ghi[i] = (uint16_t)gh;
    }
  }
}

SECAGG_CLONES
void secagg_cmp_level(int64_t n, int64_t w, int64_t party0, const uint8_t *mine,
                      const uint8_t *theirs, const uint8_t *a, const uint8_t *b,
                      const uint8_t *c, uint16_t *ghi, const uint8_t *a_next,
                      const uint8_t *b_next, uint8_t *out) {
  switch (w) {
    case 32: level_w(n, 32, party0, mine, theirs, a, b, c, ghi, a_next, b_next, out); break;
    case 16: level_w(n, 16, party0, mine, theirs, a, b, c, ghi, a_next, b_next, out); break;
    case 8: level_w(n, 8, party0, mine, theirs, a, b, c, ghi, a_next, b_next, out); break;
    case 4: level_w(n, 4, party0, mine, theirs, a, b, c, ghi, a_next, b_next, out); break;
    default: level_w(n, 2, party0, mine, theirs, a, b, c, ghi, a_next, b_next, out); break;
  }
}

/* From the opened e = b ^ s (packed bits) and this party's shares of the dealer's
 * s (arithmetic), v_k and s*v_k, and the opened f_k = y_k - v_k: this party's
 * arithmetic shares of b (bits, may be NULL) and of b * y_k (prod, ny rows of n). */
SECAGG_CLONES
void secagg_cmp_b2a(int64_t n, int64_t party0, const uint8_t *e_mine, const uint8_t *e_theirs,
                    const uint64_t *s, int64_t ny, const uint64_t *y, int64_t ldy,
                    const uint64_t *f, const uint64_t *sv, uint64_t *bits, uint64_t *prod) {
  for (int64_t i = 0; i < n; i++) {
    const uint64_t e = (uint64_t)((e_mine[i >> 3] ^ e_theirs[i >> 3]) >> (i & 7)) & 1;
    const uint64_t sign = 1 - 2 * e; /* 1 or -1 mod 2^64 */
    if (bits != NULL) bits[i] = (party0 ? e : 0) + sign * s[i];
    for (int64_t k = 0; k < ny; k++) {
      const uint64_t sy = f[k * n + i] * s[i] + sv[k * n + i];
      prod[k * n + i] = e * y[k * ldy + i] + sign * sy;
    }
  }
}

/* Dealer: party 0's shares of r's bits and of the pairwise products, from both
 * parties' arithmetic shares of r and party 1's XOR shares (rb1, rr1 as 32-bit). */
SECAGG_CLONES
void secagg_cmp_dealer_bits(int64_t n, const uint64_t *r0, const uint64_t *r1,
                            const uint64_t *rb1, const uint8_t *rr1, uint64_t *rb0,
                            uint8_t *rr0) {
  for (int64_t i = 0; i < n; i++) {
    const uint64_t r = r0[i] + r1[i], lo = r & LOW63;
    rb0[i] = r ^ rb1[i];
    st(rr0, i, 32, even64(lo & (lo >> 1)) ^ ld(rr1, i, 32));
  }
}

/* Dealer: party 0's AND-triple shares c0 = (a0^a1)&(b0^b1)^c1, bytewise. */
SECAGG_CLONES
void secagg_cmp_dealer_and(int64_t len, const uint8_t *a0, const uint8_t *a1,
                           const uint8_t *b0, const uint8_t *b1, const uint8_t *c1,
                           uint8_t *c0) {
  for (int64_t k = 0; k < len; k++) c0[k] = ((a0[k] ^ a1[k]) & (b0[k] ^ b1[k])) ^ c1[k];
}

/* Dealer: s = s0 ^ s1 (packed bits); party 0's arithmetic s - s1 and s*(v0+v1) - sv1. */
SECAGG_CLONES
void secagg_cmp_dealer_b2a(int64_t n, const uint8_t *sb0, const uint8_t *sb1,
                           const uint64_t *s1, int64_t ny, const uint64_t *v0,
                           const uint64_t *v1, const uint64_t *sv1, uint64_t *s0,
                           uint64_t *sv0) {
  for (int64_t i = 0; i < n; i++) {
    const uint64_t s = (uint64_t)((sb0[i >> 3] ^ sb1[i >> 3]) >> (i & 7)) & 1;
    s0[i] = s - s1[i];
    for (int64_t k = 0; k < ny; k++) {
      const int64_t j = k * n + i;
      sv0[j] = s * (v0[j] + v1[j]) - sv1[j];
    }
  }
}

/* ABI check for the loader: bump when a signature above changes. */
int64_t secagg_cmp_abi(void) { return 1; }
