#pragma once
// Conversions between gRPC's ByteBuffer and the std::string bytes that cross the seam.
#include <grpcpp/support/byte_buffer.h>

#include <string>

namespace esp {

std::string ByteBufferToString(const grpc::ByteBuffer& buffer);
grpc::ByteBuffer StringToByteBuffer(const std::string& bytes);

}  // namespace esp
