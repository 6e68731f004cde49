#include "rendezvous.hpp"
#include "shim_common.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace kvxfer_trtllm
{
namespace
{

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMagic = 0x4b565852; // "KVXR"
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxAddressLen = 1024;
constexpr int kMaxWorldSize = 1 << 16;
constexpr int64_t kDefaultTimeoutMs = 60000;

[[noreturn]] void fail(std::string const& message)
{
    throw std::runtime_error("kvxfer rendezvous: " + message);
}

std::string errnoText()
{
    return std::strerror(errno);
}

class Socket
{
public:
    explicit Socket(int fd = -1)
        : mFd(fd)
    {
    }

    Socket(Socket&& other) noexcept
        : mFd(other.mFd)
    {
        other.mFd = -1;
    }

    Socket& operator=(Socket&& other) noexcept
    {
        if (this != &other)
        {
            reset();
            mFd = other.mFd;
            other.mFd = -1;
        }
        return *this;
    }

    Socket(Socket const&) = delete;
    Socket& operator=(Socket const&) = delete;

    ~Socket()
    {
        reset();
    }

    void reset()
    {
        if (mFd >= 0)
            ::close(mFd);
        mFd = -1;
    }

    [[nodiscard]] int fd() const noexcept
    {
        return mFd;
    }

private:
    int mFd;
};

int msLeft(Clock::time_point deadline)
{
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left, 1 << 30));
}

// Waits until fd is ready for `events`; false on deadline.
bool waitFor(int fd, short events, Clock::time_point deadline)
{
    for (;;)
    {
        pollfd p{fd, events, 0};
        int n = ::poll(&p, 1, msLeft(deadline));
        if (n > 0)
            return true;
        if (n == 0)
            return false;
        if (errno != EINTR)
            fail("poll: " + errnoText());
    }
}

void sendAll(int fd, void const* data, size_t len, Clock::time_point deadline)
{
    auto const* p = static_cast<char const*>(data);
    while (len > 0)
    {
        if (!waitFor(fd, POLLOUT, deadline))
            fail("timed out sending");
        ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0)
        {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fail("send: " + errnoText());
        }
        p += n;
        len -= static_cast<size_t>(n);
    }
}

void recvAll(int fd, void* data, size_t len, Clock::time_point deadline)
{
    auto* p = static_cast<char*>(data);
    while (len > 0)
    {
        if (!waitFor(fd, POLLIN, deadline))
            fail("timed out receiving");
        ssize_t n = ::recv(fd, p, len, 0);
        if (n == 0)
            fail("peer closed the connection");
        if (n < 0)
        {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fail("recv: " + errnoText());
        }
        p += n;
        len -= static_cast<size_t>(n);
    }
}

void putU32(std::string& out, uint32_t v)
{
    uint32_t be = htonl(v);
    out.append(reinterpret_cast<char const*>(&be), sizeof be);
}

uint32_t getU32(int fd, Clock::time_point deadline)
{
    uint32_t be = 0;
    recvAll(fd, &be, sizeof be, deadline);
    return ntohl(be);
}

std::string getString(int fd, Clock::time_point deadline)
{
    uint32_t len = getU32(fd, deadline);
    if (len > kMaxAddressLen)
        fail("address of " + std::to_string(len) + " bytes is longer than allowed");
    std::string s(len, '\0');
    recvAll(fd, s.data(), len, deadline);
    return s;
}

// Splits "host:port" / "[v6]:port".
std::pair<std::string, std::string> splitHostPort(std::string const& hostPort)
{
    std::string host;
    std::string port;
    if (!hostPort.empty() && hostPort.front() == '[')
    {
        auto close = hostPort.find("]:");
        if (close == std::string::npos)
            throw std::invalid_argument("KVX_RENDEZVOUS: expected [ipv6]:port, got '" + hostPort + "'");
        host = hostPort.substr(1, close - 1);
        port = hostPort.substr(close + 2);
    }
    else
    {
        auto colon = hostPort.rfind(':');
        if (colon == std::string::npos || colon == 0)
            throw std::invalid_argument("KVX_RENDEZVOUS: expected host:port, got '" + hostPort + "'");
        host = hostPort.substr(0, colon);
        port = hostPort.substr(colon + 1);
    }
    if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos || std::stoul(port) == 0
        || std::stoul(port) > 65535)
        throw std::invalid_argument("KVX_RENDEZVOUS: bad port in '" + hostPort + "'");
    return {host, port};
}

struct AddrInfoList
{
    addrinfo* head = nullptr;

    ~AddrInfoList()
    {
        if (head)
            ::freeaddrinfo(head);
    }
};

void resolve(std::string const& hostPort, bool passive, AddrInfoList& out)
{
    auto [host, port] = splitHostPort(hostPort);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &out.head);
    if (rc != 0)
        fail("cannot resolve '" + hostPort + "': " + ::gai_strerror(rc));
}

Socket listenOn(std::string const& hostPort, Clock::time_point deadline)
{
    AddrInfoList addrs;
    resolve(hostPort, true, addrs);
    std::string lastError = "no address";
    // The port may still be held by the previous round's socket for a moment.
    do
    {
        for (addrinfo* ai = addrs.head; ai; ai = ai->ai_next)
        {
            Socket s(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
            if (s.fd() < 0)
            {
                lastError = "socket: " + errnoText();
                continue;
            }
            int one = 1;
            ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (::bind(s.fd(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(s.fd(), 128) != 0)
            {
                lastError = "bind/listen: " + errnoText();
                continue;
            }
            return s;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    } while (Clock::now() < deadline);
    fail("rank 0 cannot listen on " + hostPort + ": " + lastError);
}

Socket connectTo(std::string const& hostPort, Clock::time_point deadline)
{
    std::string lastError = "no address";
    // Rank 0 may not be listening yet: retry until the deadline.
    do
    {
        AddrInfoList addrs;
        resolve(hostPort, false, addrs);
        for (addrinfo* ai = addrs.head; ai; ai = ai->ai_next)
        {
            Socket s(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
            if (s.fd() < 0)
            {
                lastError = "socket: " + errnoText();
                continue;
            }
            int rc = ::connect(s.fd(), ai->ai_addr, ai->ai_addrlen);
            if (rc != 0 && errno == EINPROGRESS)
            {
                auto attemptDeadline = std::min(deadline, Clock::now() + std::chrono::seconds(2));
                if (waitFor(s.fd(), POLLOUT, attemptDeadline))
                {
                    int err = 0;
                    socklen_t len = sizeof err;
                    ::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
                    errno = err;
                    rc = err == 0 ? 0 : -1;
                }
                else
                {
                    errno = ETIMEDOUT;
                }
            }
            if (rc == 0)
            {
                int one = 1;
                ::setsockopt(s.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                return s;
            }
            lastError = errnoText();
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    } while (Clock::now() < deadline);
    fail("cannot reach rank 0 at " + hostPort + " (" + lastError + ")");
}

std::string helloMessage(RankInfo const& info, std::string const& address)
{
    std::string out;
    putU32(out, kMagic);
    putU32(out, kVersion);
    putU32(out, static_cast<uint32_t>(info.worldSize));
    putU32(out, static_cast<uint32_t>(info.rank));
    putU32(out, static_cast<uint32_t>(address.size()));
    out += address;
    return out;
}

std::vector<std::string> serveAsRankZero(
    RankInfo const& info, std::string const& selfAddress, Clock::time_point deadline)
{
    Socket listener = listenOn(info.rendezvous, deadline);
    std::vector<std::string> addresses(info.worldSize);
    std::vector<Socket> clients(info.worldSize);
    addresses[0] = selfAddress;
    int joined = 1;
    while (joined < info.worldSize)
    {
        if (!waitFor(listener.fd(), POLLIN, deadline))
            fail("timed out: " + std::to_string(joined) + " of " + std::to_string(info.worldSize) + " ranks joined at "
                 + info.rendezvous);
        Socket client(::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (client.fd() < 0)
            continue;
        // A stray connection (port scanner, old round) must not stall the
        // round for long: give each hello a few seconds at most.
        auto helloDeadline = std::min(deadline, Clock::now() + std::chrono::seconds(5));
        try
        {
            if (getU32(client.fd(), helloDeadline) != kMagic || getU32(client.fd(), helloDeadline) != kVersion)
                continue;
        }
        catch (std::runtime_error const&)
        {
            continue;
        }
        uint32_t world = getU32(client.fd(), helloDeadline);
        uint32_t rank = getU32(client.fd(), helloDeadline);
        std::string address = getString(client.fd(), helloDeadline);
        if (world != static_cast<uint32_t>(info.worldSize))
            fail("rank " + std::to_string(rank) + " says the world has " + std::to_string(world)
                 + " ranks, rank 0 says " + std::to_string(info.worldSize));
        if (rank == 0 || rank >= world)
            fail("a peer claims rank " + std::to_string(rank) + " in a world of " + std::to_string(world));
        if (clients[rank].fd() >= 0)
            fail("rank " + std::to_string(rank) + " joined twice");
        addresses[rank] = std::move(address);
        clients[rank] = std::move(client);
        ++joined;
    }
    std::string reply;
    putU32(reply, kMagic);
    putU32(reply, static_cast<uint32_t>(info.worldSize));
    for (auto const& a : addresses)
    {
        putU32(reply, static_cast<uint32_t>(a.size()));
        reply += a;
    }
    for (int r = 1; r < info.worldSize; ++r)
        sendAll(clients[r].fd(), reply.data(), reply.size(), deadline);
    return addresses;
}

std::vector<std::string> joinRankZero(RankInfo const& info, std::string const& selfAddress, Clock::time_point deadline)
{
    Socket s = connectTo(info.rendezvous, deadline);
    std::string hello = helloMessage(info, selfAddress);
    sendAll(s.fd(), hello.data(), hello.size(), deadline);
    if (getU32(s.fd(), deadline) != kMagic)
        fail("rank 0 at " + info.rendezvous + " answered with something else");
    uint32_t world = getU32(s.fd(), deadline);
    if (world != static_cast<uint32_t>(info.worldSize))
        fail("rank 0 returned " + std::to_string(world) + " addresses, expected " + std::to_string(info.worldSize));
    std::vector<std::string> addresses(world);
    for (auto& a : addresses)
        a = getString(s.fd(), deadline);
    if (addresses[info.rank] != selfAddress)
        fail("rank 0 returned another address for this rank");
    return addresses;
}

// Parses a whole decimal integer in [lo, hi] into out; false when unset.
bool readIntEnv(char const* name, long long lo, long long hi, long long& out)
{
    char const* text = std::getenv(name);
    if (text == nullptr || *text == '\0')
        return false;
    long long v = 0;
    if (!parseDecimal(text, v) || v < lo || v > hi)
        throw std::invalid_argument(std::string("kvxfer: ") + name + "='" + text + "' must be an integer in ["
                                    + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    out = v;
    return true;
}

} // namespace

RankInfo rankInfoFromEnvironment()
{
    RankInfo info;
    long long world = 1;
    long long rank = 0;
    long long timeout = kDefaultTimeoutMs;
    readIntEnv("KVX_WORLD_SIZE", 1, kMaxWorldSize, world);
    bool haveRank = readIntEnv("KVX_RANK", 0, kMaxWorldSize - 1, rank);
    readIntEnv("KVX_RENDEZVOUS_TIMEOUT_MS", 1, 24LL * 3600 * 1000, timeout);
    if (rank >= world)
        throw std::invalid_argument(
            "kvxfer: KVX_RANK=" + std::to_string(rank) + " is not below KVX_WORLD_SIZE=" + std::to_string(world));
    info.worldSize = static_cast<int>(world);
    info.rank = static_cast<int>(rank);
    info.timeoutMs = timeout;
    if (world > 1)
    {
        char const* rendezvous = std::getenv("KVX_RENDEZVOUS");
        if (!haveRank || rendezvous == nullptr || *rendezvous == '\0')
            throw std::invalid_argument("kvxfer: KVX_WORLD_SIZE=" + std::to_string(world)
                                        + " needs KVX_RANK and KVX_RENDEZVOUS=host:port (rank 0 listens there)");
        info.rendezvous = rendezvous;
        splitHostPort(info.rendezvous); // validate early
    }
    return info;
}

std::vector<std::string> allGatherAddresses(RankInfo const& info, std::string const& selfAddress)
{
    if (info.worldSize == 1)
        return {selfAddress};
    if (selfAddress.size() > kMaxAddressLen)
        fail("local address too long");
    auto deadline = Clock::now() + std::chrono::milliseconds(info.timeoutMs);
    return info.rank == 0 ? serveAsRankZero(info, selfAddress, deadline) : joinRankZero(info, selfAddress, deadline);
}

} // namespace kvxfer_trtllm
