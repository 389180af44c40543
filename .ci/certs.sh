# Throwaway TLS certificates for the test services. Sourced by .ci/services.sh
# and .ci/redis.sh.

# ncps_test_certs DIR WHO: a CA (DIR/ca.crt) and a server certificate it
# signs for IP:127.0.0.1 and DNS:localhost (DIR/server.crt, DIR/server.key),
# valid two days; WHO names the caller in the error message.
ncps_test_certs() {
    local tls="$1" who="$2"
    rm -rf "$tls"
    mkdir -p "$tls"
    chmod 755 "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ncps $who test CA" \
        -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null &&
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null &&
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' \
            >"$tls/ext.cnf" &&
        openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
            -CAcreateserial -days 2 -extfile "$tls/ext.cnf" -out "$tls/server.crt" 2>/dev/null ||
        { echo "$who.sh: openssl could not make the test certificates" >&2; return 1; }
    chmod 644 "$tls/ca.crt" "$tls/server.crt"
}
