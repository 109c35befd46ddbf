// MetricsExporter over prometheus-cpp's Exposer. civetweb's begin_request callback sees every request
// before any handler: anything but GET /metrics is answered here (404 / 405) and never reaches the
// Exposer, whose handler would also serve /metrics/<anything>.
#include "monitoring/exporter.h"

#include <CivetServer.h>
#include <arpa/inet.h>
#include <dlfcn.h>
#include <pthread.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <prometheus/exposer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "kernels/error.h"

// civetweb (as packaged) creates its worker threads with a small fixed stack, and glibc takes a
// process's static TLS out of that stack. With OpenBLAS (60 KB of TLS) and the CUDA runtime loaded,
// too little is left and the first request overflows it inside snprintf. Every explicit thread stack
// size in this process is therefore raised to at least 1 MiB (the call is forwarded to libc).
extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  using Fn = int (*)(pthread_attr_t*, size_t);
  static const Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  constexpr size_t kMinStack = size_t(1) << 20;
  return real(attr, size < kMinStack ? kMinStack : size);
}

namespace dcf {

namespace {

// Reads the registry under the exporter's lock (see MetricsExporter::update).
class LockedCollectable : public prometheus::Collectable {
 public:
  LockedCollectable(std::shared_ptr<std::mutex> mu, std::shared_ptr<prometheus::Registry> reg)
      : mu_(std::move(mu)), reg_(std::move(reg)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::lock_guard<std::mutex> lock(*mu_);
    return reg_->Collect();
  }

 private:
  std::shared_ptr<std::mutex> mu_;
  std::shared_ptr<prometheus::Registry> reg_;
};

void reply(mg_connection* c, int code, const char* status, const char* extra_header, bool body) {
  char text[128];
  int n = std::snprintf(text, sizeof text, "%d %s: this exporter serves only GET /metrics\n", code, status);
  mg_printf(c,
            "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%s"
            "Connection: close\r\n\r\n",
            code, status, n, extra_header);
  if (body) mg_write(c, text, size_t(n));
}

int begin_request(mg_connection* c) {
  const mg_request_info* ri = mg_get_request_info(c);
  const char* uri = ri->local_uri ? ri->local_uri : ri->request_uri;
  const bool metrics = uri && std::strcmp(uri, "/metrics") == 0;
  const bool get = ri->request_method && std::strcmp(ri->request_method, "GET") == 0;
  const bool head = ri->request_method && std::strcmp(ri->request_method, "HEAD") == 0;
  if (metrics && get) return 0;  // the Exposer's handler answers
  if (metrics) {
    reply(c, 405, "Method Not Allowed", "Allow: GET\r\n", !head);
    return 405;
  }
  reply(c, 404, "Not Found", "", !head);
  return 404;
}

// civetweb's own error messages (e.g. the reason a bind failed); kept, never printed.
std::mutex g_log_mu;
std::string g_last_log;
int log_message(const mg_connection*, const char* message) {
  std::lock_guard<std::mutex> lock(g_log_mu);
  g_last_log = message ? message : "";
  return 1;
}

// Why binding address:port fails, from a bind of our own (civetweb's exception does not say).
std::string bind_error(const std::string& address, int port) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
  if (address.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = family = AF_INET6;
    a->sin6_port = htons(uint16_t(port));
    inet_pton(AF_INET6, address.c_str(), &a->sin6_addr);
    len = sizeof(sockaddr_in6);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(uint16_t(port));
    inet_pton(AF_INET, address.c_str(), &a->sin_addr);
    len = sizeof(sockaddr_in);
  }
  int fd = ::socket(family, SOCK_STREAM, 0);
  if (fd < 0) return std::strerror(errno);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  std::string out;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) out = std::strerror(errno);
  ::close(fd);
  return out;
}

}  // namespace

std::string listen_spec(const std::string& address, int port) {
  unsigned char buf[sizeof(in6_addr)];
  if (inet_pton(AF_INET, address.c_str(), buf) == 1) return address + ":" + std::to_string(port);
  if (inet_pton(AF_INET6, address.c_str(), buf) == 1) return "[" + address + "]:" + std::to_string(port);
  throw InputError("monitoring.listen_address: '" + address + "' is not an IPv4 or IPv6 address");
}

MetricsExporter::MetricsExporter(const std::string& address, int port, int threads)
    : mutex_(std::make_shared<std::mutex>()),
      registry_(std::make_shared<prometheus::Registry>()),
      address_(address) {
  if (port < 0 || port > 65535) throw InputError("monitoring.port: " + std::to_string(port) + " is not in 0..65535");
  const std::string spec = listen_spec(address, port);
  if (spec[0] == '[' && !mg_check_feature(8))
    throw InputError("monitoring.listen_address: '" + address +
                     "' is IPv6, but this build's civetweb has no IPv6 support; use an IPv4 address (0.0.0.0 for all)");
  locked_ = std::make_shared<LockedCollectable>(mutex_, registry_);
  CivetCallbacks callbacks;
  callbacks.begin_request = &begin_request;
  callbacks.log_message = &log_message;
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{"listening_ports", spec, "num_threads", std::to_string(threads),
                                 "request_timeout_ms", "10000"},
        &callbacks);
  } catch (const std::exception& e) {
    std::string why = bind_error(address, port);
    if (why.empty()) {
      std::lock_guard<std::mutex> lock(g_log_mu);
      why = g_last_log.empty() ? e.what() : g_last_log;
      while (!why.empty() && (why.back() == '\n' || why.back() == '\r')) why.pop_back();
    }
    throw InputError("monitoring: cannot listen on " + spec + " (monitoring.listen_address, monitoring.port): " + why);
  }
  exposer_->RegisterCollectable(locked_);
  auto ports = exposer_->GetListeningPorts();
  port_ = ports.empty() ? port : ports.front();
}

MetricsExporter::~MetricsExporter() = default;

void MetricsExporter::update(const std::function<void()>& fn) {
  std::lock_guard<std::mutex> lock(*mutex_);
  fn();
}

std::string MetricsExporter::url() const { return "http://" + listen_spec(address_, port_) + "/metrics"; }

}  // namespace dcf
