// All-gather of connection-manager addresses for makeUcxConnectionManager(),
// which TensorRT-LLM calls on every rank with no arguments and which must
// return every rank's address. Ranks find each other through KVX_RANK,
// KVX_WORLD_SIZE and a TCP rendezvous at KVX_RENDEZVOUS=host:port served by
// rank 0 (see README "TensorRT-LLM drop-in").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace [[gnu::visibility("hidden")]] kvxfer_trtllm
{

struct RankInfo
{
    int rank = 0;
    int worldSize = 1;
    std::string rendezvous; // host:port, empty when worldSize == 1
    int64_t timeoutMs = 0;
};

// Reads KVX_RANK / KVX_WORLD_SIZE / KVX_RENDEZVOUS / KVX_RENDEZVOUS_TIMEOUT_MS;
// throws std::invalid_argument on malformed or inconsistent values.
RankInfo rankInfoFromEnvironment();

// Every rank's address, indexed by rank. Rank 0 listens on info.rendezvous;
// the others connect (retrying until rank 0 is up). Throws std::runtime_error
// when the round does not complete within info.timeoutMs.
std::vector<std::string> allGatherAddresses(RankInfo const& info, std::string const& selfAddress);

} // namespace kvxfer_trtllm
