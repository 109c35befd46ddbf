// MetricsExporter: the Prometheus HTTP endpoint of one process (prometheus-cpp's Exposer over civetweb).
// It binds exactly the configured address and port, answers GET /metrics with the text exposition of
// a registry, 405 for any other method on /metrics and 404 for every other path. A registry is read
// under the exporter's lock: a writer that updates several metrics inside `Update` makes every scrape
// see them from the same moment (one training step), never half old and half new.
#pragma once
#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

namespace prometheus {
class Exposer;
}

namespace dcf {

class MetricsExporter {
 public:
  // address: an IPv4 or IPv6 literal ("127.0.0.1", "0.0.0.0", "::1"); port 1..65535, or 0 for any free
  // port (see port()).
  // Throws InputError with one line naming the address when it cannot listen there.
  MetricsExporter(const std::string& address, int port, int threads = 2);
  ~MetricsExporter();
  MetricsExporter(const MetricsExporter&) = delete;
  MetricsExporter& operator=(const MetricsExporter&) = delete;

  prometheus::Registry& registry() { return *registry_; }
  // Runs fn with scrapes held off; update several metrics in it for a consistent scrape.
  void update(const std::function<void()>& fn);
  std::mutex& mutex() { return *mutex_; }
  int port() const { return port_; }
  std::string url() const;  // http://address:port/metrics

 private:
  std::shared_ptr<std::mutex> mutex_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> locked_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
  int port_ = 0;
};

// "host:port" for civetweb and URLs: IPv6 literals in brackets. Throws InputError when address is not
// an IPv4/IPv6 literal.
std::string listen_spec(const std::string& address, int port);

}  // namespace dcf
