#!/usr/bin/env bash
# The binary users run against what they would run instead, side by side: `cargo build
# --release`'s mpapi (one worker thread, a cached token) and nginx `auth_request` (one worker,
# the auth subrequest answered by an nginx location, the same identity, forwarding and
# request-id headers set by `proxy_set_header`, the id on the answer too), both in front of
# the same nginx `return 200` upstream, driven in turn by `wrk -t1 -c32` with a mini
# program's headers. Prints requests/s and CPU per request of each proxy and of wrk, per
# round and as medians.
#
#   scripts/versus-nginx.sh [ROUNDS] [SECONDS]     (default 5 rounds of 10 s each, after 2 s warm-up)
#
# Needs wrk, nginx and curl (apt packages wrk, nginx, curl). MPAPI_BINARY=path measures an
# already built binary instead (e.g. two builds in turn, to compare them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not on PATH (apt package $tool)" >&2; exit 1; }
done
rounds=${1:-5}
seconds=${2:-10}
binary=${MPAPI_BINARY:-}
if [ -z "$binary" ]; then
  cargo build --release
  binary=$PWD/target/release/mpapi
fi

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Five ports nothing listens on: the upstream, nginx auth_request, mpapi, the simulator, admin.
read -r upstream_port nginx_port mpapi_port sim_port admin_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

appid=wxversus00000001
openid=oVersus0000000000000000000001
unionid=uVersus0000000000000000000001

nginx_common="daemon off; master_process off; worker_processes 1; error_log $dir/error.log warn;
events { worker_connections 4096; }"
nginx_temp="client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;"
cat >"$dir/upstream.conf" <<EOF
$nginx_common
pid $dir/upstream.pid;
http {
  access_log off; $nginx_temp
  keepalive_requests 10000000; keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$upstream_port;
    location / {
      default_type application/json;
      return 200 '{"status":0,"data":{"id":7,"name":"order","items":[1,2,3]}}';
    }
  }
}
EOF
cat >"$dir/auth_request.conf" <<EOF
$nginx_common
pid $dir/auth_request.pid;
http {
  access_log off; $nginx_temp
  keepalive_requests 10000000; keepalive_timeout 300s;
  map \$http_x_request_id \$mpapi_request_id { "" \$request_id; default \$http_x_request_id; }
  upstream backend { server 127.0.0.1:$upstream_port; keepalive 1024; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$nginx_port;
    location = /auth { internal; return 200; }
    location /app/ {
      auth_request /auth;
      proxy_pass http://backend/api/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header User-Token "";
      # mpapi also sends User-Extra and User-Mobile, empty for this user without a profile:
      # nginx drops a header whose value is empty, so they have no counterpart here.
      proxy_set_header User-Id '1';
      proxy_set_header User-Openid '$openid';
      proxy_set_header User-Unionid '$unionid';
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Request-Id \$mpapi_request_id;
      add_header X-Request-Id \$mpapi_request_id always;
    }
  }
}
EOF
cat >"$dir/mpapi.yaml" <<EOF
server:
  listen: "127.0.0.1:$mpapi_port"
  threads: 1
  client_keepalive_requests: 0   # as nginx's keepalive_requests above
database:
  url: "sqlite://$dir/mpapi.db?mode=rwc"
wechat:
  api_base: "http://127.0.0.1:$sim_port"
apps:
  - appid: "$appid"
    secret: "versus-secret"
    upstreams: ["http://127.0.0.1:$upstream_port/api"]
admin:
  listen: "127.0.0.1:$admin_port"
dev:
  simulator: "127.0.0.1:$sim_port"
EOF

wait_for() {
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
  echo "nothing answers on port $1" >&2
  exit 1
}
nginx -e "$dir/error.log" -c "$dir/upstream.conf" &
pids+=($!)
nginx -e "$dir/error.log" -c "$dir/auth_request.conf" &
nginx_pid=$!
pids+=("$nginx_pid")
RUST_LOG=warn "$binary" -c "$dir/mpapi.yaml" 2>"$dir/mpapi.log" &
mpapi_pid=$!
pids+=("$mpapi_pid")
wait_for "$upstream_port"
wait_for "$nginx_port"
wait_for "$mpapi_port"

# A logged-in user, through the simulator as a mini program would: wx.login, then /login.
code=$(curl -s -X POST "127.0.0.1:$sim_port/sim/code" -H 'Content-Type: application/json' \
  -d "{\"appid\":\"$appid\",\"openid\":\"$openid\",\"unionid\":\"$unionid\"}" |
  sed -n 's/.*"code":"\([^"]*\)".*/\1/p')
token=$(curl -s -X POST "127.0.0.1:$mpapi_port/login" -H "User-App: $appid" \
  -d "{\"code\":\"$code\"}" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
[ -n "$token" ] || { echo "login failed: $(cat "$dir/mpapi.log")" >&2; exit 1; }

cat >"$dir/request.lua" <<EOF
wrk.path = "/app/orders/7?page=2"
wrk.headers["User-App"] = "$appid"
wrk.headers["User-Token"] = "$token"
wrk.headers["User-Agent"] = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN miniProgram/$appid"
wrk.headers["Accept"] = "*/*"
wrk.headers["Referer"] = "https://servicewechat.com/$appid/42/page-frame.html"
wrk.headers["Content-Type"] = "application/json"
EOF

# CPU time (user + system) a process has used, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)

# One wrk run against PORT, charging PID: "requests/s proxy-µs/request wrk-µs/request".
measure() {
  local port=$1 pid=$2 before after out requests wrk_cpu
  wrk -t1 -c32 -d2s -s "$dir/request.lua" "http://127.0.0.1:$port" >/dev/null
  before=$(ticks "$pid")
  # wrk's output, then its own CPU seconds (user + system) on the last line.
  out=$(python3 -c 'import resource, subprocess, sys
sys.stdout.write(subprocess.run(sys.argv[1:], capture_output=True, text=True).stdout)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime)' wrk -t1 -c32 -d"${seconds}s" -s "$dir/request.lua" \
    "http://127.0.0.1:$port")
  after=$(ticks "$pid")
  if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then echo "failed requests: $out" >&2; exit 1; fi
  requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
  wrk_cpu=$(tail -1 <<<"$out")
  awk -v rps="$(sed -n 's/^Requests\/sec: *//p' <<<"$out")" -v n="$requests" \
    -v proxy="$((after - before))" -v tick="$tick" -v wrk="$wrk_cpu" \
    'BEGIN { printf "%.0f %.1f %.1f\n", rps, proxy * 1e6 / tick / n, wrk * 1e6 / n }'
}

: >"$dir/results"
for round in $(seq 1 "$rounds"); do
  for proxy in mpapi nginx; do
    if [ "$proxy" = mpapi ]; then line=$(measure "$mpapi_port" "$mpapi_pid")
    else line=$(measure "$nginx_port" "$nginx_pid"); fi
    echo "$proxy $line" >>"$dir/results"
    printf 'round %d/%d: %-22s %s requests/s, %s µs CPU a request (wrk %s)\n' "$round" "$rounds" \
      "$proxy" $line
  done
done

echo
echo '| proxy (median of the rounds) | requests/s | proxy CPU µs a request | wrk CPU µs a request |'
echo '|---|---:|---:|---:|'
for proxy in mpapi nginx; do
  name="mpapi, cached token"
  [ "$proxy" = nginx ] && name="nginx auth_request"
  printf '| %s | %s | %s | %s |\n' "$name" $(awk -v p="$proxy" '$1 == p' "$dir/results" |
    python3 -c 'import statistics, sys
rows = [list(map(float, line.split()[1:])) for line in sys.stdin]
print(*(f"{statistics.median(column):.{0 if i == 0 else 1}f}" for i, column in enumerate(zip(*rows))))')
done
