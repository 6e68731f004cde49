// kvx_copy_batch: one launch copies a whole list of (src, dst, len) entries,
// so a request of thousands of 4-32 KiB KV blocks costs one launch instead of
// one copy (or one transport operation) per block. Pointers may be local
// device memory or peer memory mapped through CUDA IPC; stores to a peer go
// over NVLink. One block per entry at a time (grid-stride over entries),
// 16-byte accesses when source, destination and length allow, bytes otherwise.
//
// copy_kernel.ptx is this file compiled for compute_70 (JIT-compiled by the
// driver for the card at load time): nvcc -ptx -arch=compute_70 -O3 copy_kernel.cu
// (scripts/gpu/run.sh --ptx regenerates it on a machine with nvcc).

struct KvxCopy {
    unsigned long long src;
    unsigned long long dst;
    unsigned long long len;
};

extern "C" __global__ void kvx_copy_batch(const KvxCopy* __restrict__ list, unsigned int count)
{
    for (unsigned int i = blockIdx.x; i < count; i += gridDim.x) {
        const KvxCopy c = list[i];
        if (((c.src | c.dst | c.len) & 15ull) == 0) {
            const uint4* s = reinterpret_cast<const uint4*>(c.src);
            uint4* d = reinterpret_cast<uint4*>(c.dst);
            const unsigned long long n = c.len >> 4;
            for (unsigned long long j = threadIdx.x; j < n; j += blockDim.x)
                d[j] = s[j];
        } else {
            const unsigned char* s = reinterpret_cast<const unsigned char*>(c.src);
            unsigned char* d = reinterpret_cast<unsigned char*>(c.dst);
            for (unsigned long long j = threadIdx.x; j < c.len; j += blockDim.x)
                d[j] = s[j];
        }
    }
}
