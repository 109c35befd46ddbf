// Test helpers: a minimal HTTP/1.0 client over a socket, URL encoding, free ports, and child processes
// that can be stopped (a training job under mpirun, a Prometheus server).
#pragma once
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace dcf::test {

struct HttpResponse {
  int status = -1;        // -1: could not connect (errno in error)
  int error = 0;
  std::string headers, body;
};

inline HttpResponse http_request(const std::string& host, int port, const std::string& method, const std::string& target,
                                 const std::string& body = "", int timeout_ms = 5000) {
  HttpResponse r;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    r.error = errno;
    return r;
  }
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    r.error = errno;
    ::close(fd);
    return r;
  }
  std::string req = method + " " + target + " HTTP/1.0\r\nHost: " + host + ":" + std::to_string(port) +
                    "\r\nConnection: close\r\n";
  if (!body.empty())
    req += "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n" + body;
  for (size_t off = 0; off < req.size();) {
    ssize_t n = ::send(fd, req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += size_t(n);
  }
  std::string resp;
  char buf[16384];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    resp.append(buf, size_t(n));
  }
  ::close(fd);
  auto hdr_end = resp.find("\r\n\r\n");
  if (resp.compare(0, 5, "HTTP/") != 0 || hdr_end == std::string::npos) return r;
  r.status = std::atoi(resp.c_str() + resp.find(' ') + 1);
  r.headers = resp.substr(0, hdr_end);
  r.body = resp.substr(hdr_end + 4);
  return r;
}

inline HttpResponse http_get(const std::string& host, int port, const std::string& target) {
  return http_request(host, port, "GET", target);
}

inline std::string url_encode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += char(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice for port 0).
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// A listening socket that holds a port (for "port already in use"); closed by the destructor.
struct PortHolder {
  int fd = -1, port = 0;
  explicit PortHolder(const std::string& host = "127.0.0.1") {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd, 4);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~PortHolder() {
    if (fd >= 0) ::close(fd);
  }
};

// Listening TCP sockets of this machine as "address:port" from /proc/net/tcp (IPv4).
inline std::vector<std::string> listening_sockets() {
  std::vector<std::string> out;
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::istringstream is(line);
    std::string sl, local, remote, st;
    is >> sl >> local >> remote >> st;
    if (st != "0A") continue;  // LISTEN
    unsigned addr = 0, port = 0;
    std::sscanf(local.c_str(), "%X:%X", &addr, &port);
    in_addr ia{};
    ia.s_addr = addr;  // /proc prints the address in host order of the raw network bytes
    out.push_back(std::string(inet_ntoa(ia)) + ":" + std::to_string(port));
  }
  return out;
}

// A child process (sh -c cmd) in its own process group, output to a file; stop() sends SIGTERM to the group.
class Child {
 public:
  Child(const std::string& cmd, const std::string& log_path) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&at, 0);
    const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
    if (posix_spawn(&pid_, "/bin/sh", &fa, &at, const_cast<char**>(argv), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
  }
  ~Child() { stop(); }
  bool running() {
    if (pid_ <= 0 || done_) return false;
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      done_ = true;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    return !done_;
  }
  // Waits up to timeout_s for the exit; returns the exit status (or -1 on timeout).
  int wait(double timeout_s) {
    auto t0 = std::chrono::steady_clock::now();
    while (running()) {
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return status_;
  }
  void stop() {
    if (!running()) return;
    ::kill(-pid_, SIGTERM);
    if (wait(10) < 0) {
      ::kill(-pid_, SIGKILL);
      wait(10);
    }
  }
  int pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  bool done_ = false;
  int status_ = -1;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace dcf::test
