// kvx_copy_batch: one launch copies a whole list of (src, dst, len) entries,
// so a request of thousands of 4-32 KiB KV blocks costs one launch instead of
// one copy (or one transport operation) per block. Pointers may be local
// device memory or peer memory mapped through CUDA IPC (loads and stores then
// cross NVLink). One warp per entry at a time (grid-stride over entries);
// each lane issues UNROLL 16-byte loads before its stores, so a warp keeps
// 4 KiB in flight and peer latency is hidden; unaligned entries are copied
// byte by byte. The host splits long entries, so warps stay balanced.
//
// copy_kernel.ptx is this file compiled by nvcc (see scripts/gpu/run.sh, which
// regenerates it on the GPU machine into $OUT):
//   nvcc -ptx -arch=compute_75 -O3 copy_kernel.cu -o copy_kernel.ptx

#define UNROLL 8

struct KvxCopy
{
    unsigned long long src;
    unsigned long long dst;
    unsigned long long len;
};

extern "C" __global__ void __launch_bounds__(256) kvx_copy_batch(const KvxCopy* __restrict__ list, unsigned int count)
{
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warps = (gridDim.x * blockDim.x) >> 5;
    for (unsigned int i = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; i < count; i += warps)
    {
        const KvxCopy c = list[i];
        if (((c.src | c.dst | c.len) & 15ull) == 0)
        {
            const uint4* s = reinterpret_cast<const uint4*>(c.src);
            uint4* d = reinterpret_cast<uint4*>(c.dst);
            const unsigned long long n = c.len >> 4;
            for (unsigned long long base = 0; base < n; base += 32 * UNROLL)
            {
                uint4 v[UNROLL];
#pragma unroll
                for (int k = 0; k < UNROLL; ++k)
                {
                    const unsigned long long j = base + k * 32 + lane;
                    if (j < n)
                        v[k] = s[j];
                }
#pragma unroll
                for (int k = 0; k < UNROLL; ++k)
                {
                    const unsigned long long j = base + k * 32 + lane;
                    if (j < n)
                        d[j] = v[k];
                }
            }
        }
        else
        {
            const unsigned char* s = reinterpret_cast<const unsigned char*>(c.src);
            unsigned char* d = reinterpret_cast<unsigned char*>(c.dst);
            for (unsigned long long j = lane; j < c.len; j += 32)
                d[j] = s[j];
        }
    }
}
