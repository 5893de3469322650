# shellcheck shell=bash
# tools/s3proxy.sh: sourced by bench.sh and soak.sh; starts S3Proxy with a filesystem store on loopback.

# s3proxy_start DIR IDENTITY CREDENTIAL [JAVA_OPTION...]: S3Proxy (the jar in $S3PROXY_JAR) serving the buckets
# under DIR/blobs on a free loopback port, its config and log in DIR; returns once it accepts connections.
# Sets S3PROXY_PID and S3PROXY_PORT.
s3proxy_start() {
  local dir="$1" identity="$2" credential="$3" tries=0
  shift 3
  S3PROXY_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  mkdir -p "$dir/blobs"
  cat > "$dir/s3proxy.conf" <<CONF
s3proxy.endpoint=http://127.0.0.1:$S3PROXY_PORT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$identity
s3proxy.credential=$credential
jclouds.provider=filesystem
jclouds.filesystem.basedir=$dir/blobs
CONF
  java "$@" -jar "$S3PROXY_JAR" --properties "$dir/s3proxy.conf" > "$dir/s3proxy.log" 2>&1 &
  # shellcheck disable=SC2034  # read by the script that sourced this one
  S3PROXY_PID=$!
  until (echo > "/dev/tcp/127.0.0.1/$S3PROXY_PORT") 2> /dev/null; do
    ((tries++ < 200)) || { echo "S3Proxy did not start (see $dir/s3proxy.log)" >&2; exit 1; }
    sleep 0.1
  done
}
