// Batched copies: one launch copies a whole list of (src, dst, len) entries,
// so a request of thousands of 4-32 KiB KV blocks costs one launch instead of
// one copy (or one transport operation) per block. Pointers may be local
// device memory or peer memory mapped through CUDA IPC (loads and stores then
// cross NVLink). Two size classes, each its own kernel over its own list:
//   kvx_copy_batch  entries up to 64 KiB, one warp per entry (grid-stride);
//   kvx_copy_large  longer entries, several blocks per entry (grid-stride).
// Each thread issues UNROLL 16-byte loads before its stores, so a warp keeps
// 4 KiB in flight and peer latency is hidden; loads and stores are streaming
// (evict-first: copied bytes are not read again by this kernel). Entries whose source and
// destination share their alignment modulo 16 (or 4) copy an unaligned head
// and tail byte by byte and the body in 16-byte (or 4-byte) words; any other
// entry is copied byte by byte.
//
// copy_kernel.ptx is this file compiled by nvcc 13.0 (the GPU machine's, or the
// nvidia-cuda-nvcc wheel of the same version), .version lowered as its header says:
//   nvcc -ptx -arch=compute_75 -O3 copy_kernel.cu -o copy_kernel.ptx

#ifndef UNROLL
#define UNROLL 8
#endif

struct KvxCopy
{
    unsigned long long src;
    unsigned long long dst;
    unsigned long long len;
};

// Threads `rank` of `width` copy [s, s + n) words of type T to d.
template <typename T>
__device__ __forceinline__ void copy_words(
    const T* __restrict__ s, T* __restrict__ d, unsigned long long n, unsigned int rank, unsigned int width)
{
    const unsigned long long step = (unsigned long long)width * UNROLL;
    unsigned long long base = 0;
    for (; base + step <= n; base += step)
    {
        T v[UNROLL];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k)
            v[k] = __ldcs(s + base + k * width + rank);
#pragma unroll
        for (int k = 0; k < UNROLL; ++k)
            __stcs(d + base + k * width + rank, v[k]);
    }
    for (unsigned long long j = base + rank; j < n; j += width)
        __stcs(d + j, __ldcs(s + j));
}

__device__ __forceinline__ void copy_bytes(
    const unsigned char* s, unsigned char* d, unsigned long long n, unsigned int rank, unsigned int width)
{
    for (unsigned long long j = rank; j < n; j += width)
        d[j] = s[j];
}

// One entry, copied by threads `rank` of `width` (a warp or a block).
__device__ __forceinline__ void copy_entry(const KvxCopy& c, unsigned int rank, unsigned int width)
{
    const unsigned char* s = reinterpret_cast<const unsigned char*>(c.src);
    unsigned char* d = reinterpret_cast<unsigned char*>(c.dst);
    unsigned long long len = c.len;
    const unsigned long long word = ((c.src ^ c.dst) & 15ull) == 0 ? 16 : ((c.src ^ c.dst) & 3ull) == 0 ? 4 : 1;
    if (word == 1 || len < 2 * word)
    {
        copy_bytes(s, d, len, rank, width);
        return;
    }
    const unsigned long long head = (word - (c.src & (word - 1))) & (word - 1);
    copy_bytes(s, d, head, rank, width);
    s += head;
    d += head;
    len -= head;
    const unsigned long long body = len / word;
    if (word == 16)
        copy_words(reinterpret_cast<const uint4*>(s), reinterpret_cast<uint4*>(d), body, rank, width);
    else
        copy_words(reinterpret_cast<const unsigned int*>(s), reinterpret_cast<unsigned int*>(d), body, rank, width);
    copy_bytes(s + body * word, d + body * word, len - body * word, rank, width);
}

extern "C" __global__ void __launch_bounds__(256) kvx_copy_batch(const KvxCopy* __restrict__ list, unsigned int count)
{
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warps = (gridDim.x * blockDim.x) >> 5;
    for (unsigned int i = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; i < count; i += warps)
        copy_entry(list[i], lane, 32);
}

// Grid (x, y): the y blocks of a column share each entry the column takes.
extern "C" __global__ void __launch_bounds__(256) kvx_copy_large(const KvxCopy* __restrict__ list, unsigned int count)
{
    const unsigned int rank = blockIdx.y * blockDim.x + threadIdx.x;
    const unsigned int width = gridDim.y * blockDim.x;
    for (unsigned int i = blockIdx.x; i < count; i += gridDim.x)
        copy_entry(list[i], rank, width);
}
