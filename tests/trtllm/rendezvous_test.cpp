// makeUcxConnectionManager() is collective: several processes, each a rank,
// must get the same CommState of all ranks (KVX_RANK / KVX_WORLD_SIZE /
// KVX_RENDEZVOUS bootstrap), and a missing rank must fail within the
// rendezvous timeout instead of hanging.
#include "trtllm_test_util.hpp"

#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>

extern char** environ;

using namespace trtllm_test;

namespace
{

// A port nobody listens on right now (the kernel's pick for port 0).
int freePort()
{
    uint16_t port = 0;
    int fd = loopbackSocket(port, 0);
    if (fd < 0)
        throw std::runtime_error("cannot pick a free port");
    ::close(fd);
    return port;
}

// Starts the peer program as one rank, with the caller's environment plus `extra`.
pid_t spawnRank(std::vector<std::string> const& extra)
{
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e)
        if (std::strncmp(*e, "KVX_RANK=", 9) != 0 && std::strncmp(*e, "KVX_WORLD_SIZE=", 15) != 0
            && std::strncmp(*e, "KVX_RENDEZVOUS", 14) != 0)
            env.emplace_back(*e);
    env.insert(env.end(), extra.begin(), extra.end());
    std::vector<char*> envp;
    for (auto& s : env)
        envp.push_back(s.data());
    envp.push_back(nullptr);
    char* argv[] = {const_cast<char*>(TRTLLM_PEER_PROGRAM), nullptr};
    pid_t pid = 0;
    int rc = ::posix_spawn(&pid, TRTLLM_PEER_PROGRAM, nullptr, nullptr, argv, envp.data());
    if (rc != 0)
        throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(rc));
    return pid;
}

// Exit status of pid, killing it if it outlives `limit` (-1 then).
int waitRank(pid_t pid, std::chrono::steady_clock::time_point limit)
{
    for (;;)
    {
        int status = 0;
        pid_t done = ::waitpid(pid, &status, WNOHANG);
        if (done == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (std::chrono::steady_clock::now() > limit)
        {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return -1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

std::vector<std::string> rankEnv(int rank, int world, int port, int timeoutMs)
{
    return {"KVX_RANK=" + std::to_string(rank), "KVX_WORLD_SIZE=" + std::to_string(world),
        "KVX_RENDEZVOUS=127.0.0.1:" + std::to_string(port), "KVX_RENDEZVOUS_TIMEOUT_MS=" + std::to_string(timeoutMs)};
}

} // namespace

TEST(UcxRendezvous, FourRanksAllGather)
{
    constexpr int kWorld = 4;
    int port = freePort();
    std::vector<pid_t> pids;
    // Highest rank first: the others must wait for rank 0 to come up.
    for (int r = kWorld - 1; r >= 0; --r)
        pids.push_back(spawnRank(rankEnv(r, kWorld, port, 20000)));
    auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (pid_t pid : pids)
        EXPECT_EQ(waitRank(pid, limit), 0) << "a rank failed (its stderr is above)";
}

TEST(UcxRendezvous, MissingRankTimesOut)
{
    int port = freePort();
    auto start = std::chrono::steady_clock::now();
    // Rank 1 of 2 without rank 0, and rank 0 of 2 without rank 1 (on another port).
    pid_t lonelyJoiner = spawnRank(rankEnv(1, 2, port, 1500));
    pid_t lonelyServer = spawnRank(rankEnv(0, 2, freePort(), 1500));
    auto limit = start + std::chrono::seconds(30);
    EXPECT_EQ(waitRank(lonelyJoiner, limit), 3);
    EXPECT_EQ(waitRank(lonelyServer, limit), 3);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(15));
}

TEST(UcxRendezvous, BadEnvironmentThrows)
{
    struct Case
    {
        char const* world;
        char const* rank;
        char const* rendezvous;
    };
    for (Case c :
        {Case{"2", "0", nullptr}, Case{"2", "2", "127.0.0.1:1"}, Case{"x", "0", nullptr}, Case{"2", "1", "no-port"}})
    {
        ::setenv("KVX_WORLD_SIZE", c.world, 1);
        ::setenv("KVX_RANK", c.rank, 1);
        if (c.rendezvous)
            ::setenv("KVX_RENDEZVOUS", c.rendezvous, 1);
        else
            ::unsetenv("KVX_RENDEZVOUS");
        EXPECT_THROW(makeUcxConnectionManager(), std::exception)
            << "KVX_WORLD_SIZE=" << c.world << " KVX_RANK=" << c.rank;
    }
    ::unsetenv("KVX_WORLD_SIZE");
    ::unsetenv("KVX_RANK");
    ::unsetenv("KVX_RENDEZVOUS");
    // One rank needs no setup.
    auto m = makeUcxConnectionManager();
    EXPECT_EQ(m->getCommState().getSocketState().size(), 1u);
}
