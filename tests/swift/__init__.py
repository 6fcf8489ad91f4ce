"""SwiftStorage against a real Swift on loopback (ops/swift-saio.sh), a Keystone v2 double and a fault proxy."""
