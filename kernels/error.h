// Error handling shared by every layer: one exception type that carries a process exit status, and
// check macros that name file:line. main() catches DcfError, prints its one-line message, exits.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace dcf {

// Exit statuses: 2 = bad input (config, CLI, data file, checkpoint), 1 = internal/runtime failure.
constexpr int kExitBadInput = 2;
constexpr int kExitFailure = 1;

class DcfError : public std::runtime_error {
 public:
  DcfError(const std::string& msg, int exit_code = kExitFailure) : std::runtime_error(msg), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// Bad input from the user: exit status 2.
class InputError : public DcfError {
 public:
  explicit InputError(const std::string& msg) : DcfError(msg, kExitBadInput) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace dcf

#define DCF_CHECK(cond, ...)                                                                        \
  do {                                                                                              \
    if (!(cond))                                                                                    \
      throw ::dcf::DcfError(::dcf::detail::concat(__FILE__, ":", __LINE__, ": check failed: " #cond \
                                                  " ", ##__VA_ARGS__));                             \
  } while (0)

#define DCF_INPUT_CHECK(cond, ...)                                    \
  do {                                                                \
    if (!(cond)) throw ::dcf::InputError(::dcf::detail::concat(__VA_ARGS__)); \
  } while (0)
