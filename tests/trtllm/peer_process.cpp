// Peer process for the suite's multi-process tests.
// Default: one rank of a multi-process makeUcxConnectionManager() test, started
// by rendezvous_test.cpp with KVX_RANK / KVX_WORLD_SIZE / KVX_RENDEZVOUS set.
// Checks the CommState the collective factory returns, then exchanges an id
// and a payload with every other rank. Exit codes: 0 ok, 1 wrong result,
// 3 the factory threw (message on stderr).
// With argument "die-after-id": prints its manager's "ip port" on stdout (after kAnnounce),
// waits for one id message and exits at once, as a crashing peer would.
// With arguments "agent-target BYTES SEED": a transfer agent with a BYTES-long
// host buffer; prints "name connection-info address" (after kAnnounce), waits for the sync
// message "verify" and exits 0 if the buffer then holds bulkBytes(BYTES, SEED).
#include "trtllm_test_util.hpp"

#include <csignal>
#include <cstdio>
#include <iostream>
#include <set>

using namespace trtllm_test;

namespace
{

constexpr int kIdTag = 19;
constexpr int kDataTag = 0x74;
constexpr size_t kPayload = 1024;

uint32_t seedFor(int from, int to)
{
    return static_cast<uint32_t>(1000 * from + to);
}

int fail(std::string const& what)
{
    char const* rank = std::getenv("KVX_RANK");
    std::cerr << "rank " << (rank ? rank : "-") << ": " << what << std::endl;
    return 1;
}

} // namespace

int dieAfterId()
{
    auto manager = makeUcxConnectionManager();
    auto const& self = manager->getCommState().getSocketState().at(0);
    std::printf("%s%s %u\n", kAnnounce, self.mIp.c_str(), static_cast<unsigned>(self.mPort));
    std::fflush(stdout);
    uint64_t id = 0;
    manager->recvConnect(kvc::DataContext{kIdTag}, &id, sizeof id);
    std::_Exit(0);
}

int agentTarget(size_t bytes, uint32_t seed)
{
    std::string name = uniqueName("target");
    auto agent = makeTransferAgent(name);
    std::vector<char> buffer(bytes, 0);
    kvc::MemoryDescs descs{kvc::MemoryType::kDRAM, {kvc::MemoryDesc{buffer}}};
    agent->registerMemory(descs);
    std::printf("%s%s %s %llu\n", kAnnounce, name.c_str(), localConnectionInfo(*agent).c_str(),
        static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(buffer.data())));
    std::fflush(stdout);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline)
    {
        for (auto const& [sender, messages] : agent->getNotifiedSyncMessages())
            for (auto const& m : messages)
                if (m == "verify")
                {
                    bool same = buffer == bulkBytes(bytes, seed);
                    agent->deregisterMemory(descs);
                    return same ? 0 : fail("buffer differs after the transfer from " + sender);
                }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return fail("no \"verify\" message within 60 s");
}

int main(int argc, char** argv)
{
    // The test may stop reading stdout after the announcement; later transport logs must not kill us.
    std::signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && std::string(argv[1]) == "die-after-id")
        return dieAfterId();
    if (argc > 3 && std::string(argv[1]) == "agent-target")
        return agentTarget(std::strtoull(argv[2], nullptr, 10), static_cast<uint32_t>(std::atoi(argv[3])));
    int const rank = std::atoi(std::getenv("KVX_RANK") ? std::getenv("KVX_RANK") : "0");
    int const world = std::atoi(std::getenv("KVX_WORLD_SIZE") ? std::getenv("KVX_WORLD_SIZE") : "1");
    std::unique_ptr<kvc::ConnectionManager> manager;
    try
    {
        manager = makeUcxConnectionManager();
    }
    catch (std::exception const& e)
    {
        std::cerr << "makeUcxConnectionManager threw: " << e.what() << std::endl;
        return 3;
    }
    try
    {
        auto const& state = manager->getCommState();
        if (!state.isSocketState() || state.getSocketState().size() != static_cast<size_t>(world))
            return fail("CommState is not " + std::to_string(world) + " sockets: " + state.toString());
        if (state.getSelfIdx() != rank)
            return fail("selfIdx " + std::to_string(state.getSelfIdx()));

        // Connect to everyone else (one getConnections call, like TensorRT-LLM), announce, send.
        std::vector<kvc::SocketState> others;
        std::vector<int> otherRanks;
        for (int r = 0; r < world; ++r)
            if (r != rank)
            {
                others.push_back(state.getSocketState()[r]);
                otherRanks.push_back(r);
            }
        auto conns = manager->getConnections(kvc::CommState{others, -1});
        for (size_t i = 0; i < conns.size(); ++i)
        {
            uint64_t id = static_cast<uint64_t>(rank);
            conns[i]->send(kvc::DataContext{kIdTag}, &id, sizeof id);
            auto payload = randomBytes(kPayload, seedFor(rank, otherRanks[i]));
            conns[i]->send(kvc::DataContext{kDataTag}, payload.data(), payload.size());
        }
        std::set<uint64_t> seen;
        for (int n = 0; n < world - 1; ++n)
        {
            uint64_t id = 0;
            auto const* peer = manager->recvConnect(kvc::DataContext{kIdTag}, &id, sizeof id);
            if (peer == nullptr || id >= static_cast<uint64_t>(world) || id == static_cast<uint64_t>(rank)
                || !seen.insert(id).second)
                return fail("bad id " + std::to_string(id));
            std::vector<char> got(kPayload);
            peer->recv(kvc::DataContext{kDataTag}, got.data(), got.size());
            if (got != randomBytes(kPayload, seedFor(static_cast<int>(id), rank)))
                return fail("payload from rank " + std::to_string(id) + " differs");
        }
        // Stay up until every rank has read from us: a final id round on another tag.
        for (auto const* c : conns)
        {
            char done = 1;
            c->send(kvc::DataContext{kDataTag + 1}, &done, 1);
        }
        for (int n = 0; n < world - 1; ++n)
        {
            char done = 0;
            if (manager->recvConnect(kvc::DataContext{kDataTag + 1}, &done, 1) == nullptr)
                return fail("no final message");
        }
    }
    catch (std::exception const& e)
    {
        return fail(e.what());
    }
    return 0;
}
