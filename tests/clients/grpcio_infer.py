"""A foreign gRPC client for scoregate's tests: Python grpcio (Debian python3-grpcio) calling
the Open Inference Protocol's ModelInfer through the proxy on one channel.

    python3 grpcio_infer.py ADDR CALLS [PIN]
    GRPC_ROOT_CERT=ca.crt [GRPC_SERVER_NAME=name] python3 grpcio_infer.py ...   # over TLS

Encodes ModelInferRequest and decodes ModelInferResponse on the wire itself (protobuf's
encoding is small), so that it needs grpcio alone; `load-test/grpc_bench.py` uses the same
encoding (`request`), without grpcio. Prints one JSON object: the calls answered
per deployment (the proxy's `x-deployment` metadata), the predictions of the first answer of
each deployment, and the gRPC status of failed calls.
"""
import json
import os
import struct
import sys

METHOD = "/inference.GRPCInferenceService/ModelInfer"
ROW = [1.0, 2.0, 3.0, 4.0]


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, wire, payload):
    key = varint(number << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def request(call_id, row=ROW):
    """A ModelInferRequest for model `scorer`: one FP64 row as input `input`."""
    shape = b"".join(varint(d) for d in (1, len(row)))
    contents = field(7, 2, b"".join(struct.pack("<d", x) for x in row))  # fp64_contents, packed
    tensor = (
        field(1, 2, b"input")
        + field(2, 2, b"FP64")
        + field(3, 2, shape)
        + field(5, 2, contents)
    )
    return field(1, 2, b"scorer") + field(3, 2, call_id.encode()) + field(5, 2, tensor)


def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def fields(buf):
    """(number, wire type, value) of each field of a message."""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            length, i = read_varint(buf, i)
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
        yield number, wire, value


def predictions(response):
    """The fp64 contents of the response's first output tensor."""
    for number, _, value in fields(response):
        if number == 5:  # outputs
            for n, _, v in fields(value):
                if n == 5:  # contents
                    for c, wire, data in fields(v):
                        if c == 7 and wire == 2:  # fp64_contents, packed
                            return [x[0] for x in struct.iter_unpack("<d", data)]
                        if c == 7 and wire == 1:
                            return [struct.unpack("<d", data)[0]]
    return []


def main():
    import grpc

    addr, calls = sys.argv[1], int(sys.argv[2])
    pin = sys.argv[3] if len(sys.argv) > 3 else None
    metadata = (("x-api-version", pin),) if pin else ()
    out = {"deployments": {}, "predictions": {}, "errors": []}
    root = os.environ.get("GRPC_ROOT_CERT")
    if root:
        with open(root, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        name = os.environ.get("GRPC_SERVER_NAME")
        options = (("grpc.ssl_target_name_override", name),) if name else ()
        channel = grpc.secure_channel(addr, credentials, options)
    else:
        channel = grpc.insecure_channel(addr)
    with channel:
        infer = channel.unary_unary(METHOD)
        for i in range(calls):
            try:
                response, call = infer.with_call(
                    request("call-%d" % i), metadata=metadata, timeout=10
                )
            except grpc.RpcError as e:
                out["errors"].append({"code": e.code().name, "details": e.details()})
                continue
            deployment = dict(call.initial_metadata()).get("x-deployment", "none")
            out["deployments"][deployment] = out["deployments"].get(deployment, 0) + 1
            out["predictions"].setdefault(deployment, predictions(response))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
