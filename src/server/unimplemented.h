#pragma once
#include "transport/router.h"

namespace esp {

// Registers, for every method of the etcd v3 services that no service has claimed yet, a handler
// answering UNIMPLEMENTED with a message that names the method.
void RegisterUnimplemented(Router& router);

}  // namespace esp
