# Helpers for the guest's /init and the scenario scripts (busybox sh).
#
# A scenario script runs in its own shell with this file sourced and `set -e`
# on: any failing command fails the scenario. It reports figures with
# `figure KEY VALUE` and fails with `fail MESSAGE`; /init prints the one
# result line per scenario:
#   PARASTOR-RESULT <name> <pass|fail> <seconds> [key=value ...]

CONFIGFS=/sys/kernel/config
TARGET=$CONFIGFS/target

# Seconds since boot, with hundredths.
uptime_seconds() {
    cut -d' ' -f1 /proc/uptime
}

# Loads the comma-separated kernel modules $1 (`-`: none) and mounts
# configfs once its module is there.
load_modules() {
    [ "$1" = - ] && return 0
    for module in $(echo "$1" | tr , ' '); do
        modprobe "$module" || {
            echo "vmtest: modprobe $module failed" >&2
            return 1
        }
    done
    if [ -d $CONFIGFS ] && ! grep -q " $CONFIGFS configfs" /proc/mounts; then
        mount -t configfs configfs $CONFIGFS
    fi
}

# Runs scenario $1 with timeout $2 seconds after loading modules $3, and
# prints its result line.
run_scenario() {
    name=$1
    echo "=== vmtest: scenario $name"
    export VMTEST_SCENARIO=$name
    export VMTEST_FIGURES=/tmp/vmtest/$name.figures
    : >"$VMTEST_FIGURES"
    start=$(uptime_seconds)
    status=0
    if load_modules "$3"; then
        timeout -s TERM "$2" sh -c "set -e; . /vmtest/lib.sh; . /vmtest/scenarios/$name.sh" ||
            status=$?
    else
        echo "reason=modules" >>"$VMTEST_FIGURES"
        status=1
    fi
    end=$(uptime_seconds)
    verdict=pass
    if [ $status -ne 0 ]; then
        verdict=fail
        # busybox timeout: the script got SIGTERM (143).
        [ $status -eq 143 ] && echo "reason=timeout" >>"$VMTEST_FIGURES"
        echo "exit=$status" >>"$VMTEST_FIGURES"
    fi
    seconds=$(awk "BEGIN { printf \"%.1f\", $end - $start }")
    echo "PARASTOR-RESULT $name $verdict $seconds $(tr '\n' ' ' <"$VMTEST_FIGURES")"
}

# From the debugging shell: runs scenario $1 as /init would.
vmtest_run() {
    line=$(grep "^scenario $1 " /vmtest/plan) || {
        echo "no scenario $1 in /vmtest/plan" >&2
        return 1
    }
    set -- $line
    run_scenario "$2" "$3" "$4"
}

# Reports figure $1=$2 on the scenario's result line.
figure() {
    echo "$1=$2" >>"$VMTEST_FIGURES"
}

# Prints $* tagged with the scenario's name.
log() {
    echo "[$VMTEST_SCENARIO] $*"
}

# Fails the scenario with message $*.
fail() {
    echo "[$VMTEST_SCENARIO] FAIL: $*" >&2
    exit 1
}

# Fails unless $2 (what was found) equals $3 (what was expected); $1 says
# what is compared.
expect_eq() {
    [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
    log "ok: $1 = '$3'"
}

# Fails unless text $2 contains $3; $1 says what is looked at.
expect_contains() {
    case $2 in
    *"$3"*) log "ok: $1 contains '$3'" ;;
    *) fail "$1: '$3' not found in: $2" ;;
    esac
}

# Waits up to $2 seconds for file $1 to exist.
wait_for_file() {
    tries=$(($2 * 10))
    while [ ! -e "$1" ]; do
        tries=$((tries - 1))
        [ $tries -gt 0 ] || return 1
        usleep 100000
    done
}

# The sg node (sgN) of block device $1 (sdX/srX).
sg_of() {
    ls /sys/block/"$1"/device/scsi_generic
}

# The SCSI generic nodes now present, one a line.
sg_nodes() {
    ls /sys/class/scsi_generic 2>/dev/null || true
}

# A 16-digit hex serial for a NAA WWN derived from text $1.
wwn_of() {
    echo "naa.5001405$(echo "$1" | md5sum | cut -c1-9)"
}

# Links backstore $1 (a configfs path under core/) as LUN 0 of a new
# tcm_loop target named after $2, waits for the kernel's scan and prints
# the new disk: `sdX sgN` (or `srX sgN`).
loop_link() {
    backstore=$1
    wwn=$(wwn_of "$2")
    before=$(sg_nodes)
    mkdir -p $TARGET/loopback/$wwn/tpgt_1/lun/lun_0
    echo "$wwn" >$TARGET/loopback/$wwn/tpgt_1/nexus
    ln -s "$backstore" $TARGET/loopback/$wwn/tpgt_1/lun/lun_0/backstore
    tries=100
    while :; do
        for sg in $(sg_nodes); do
            echo "$before" | grep -qx "$sg" && continue
            block=$(ls /sys/class/scsi_generic/$sg/device/block 2>/dev/null || true)
            if [ -n "$block" ] && [ -e /dev/$block ]; then
                echo "$block $sg"
                return 0
            fi
        done
        tries=$((tries - 1))
        [ $tries -gt 0 ] || {
            echo "no new SCSI disk appeared for $backstore" >&2
            return 1
        }
        usleep 100000
    done
}

# Undoes loop_link for name $1.
loop_unlink() {
    wwn=$(wwn_of "$1")
    tpg=$TARGET/loopback/$wwn/tpgt_1
    [ -d $tpg ] || return 0
    rm -f $tpg/lun/lun_0/backstore
    rmdir $tpg/lun/lun_0
    echo NULL >$tpg/nexus 2>/dev/null || true
    rmdir $tpg
    rmdir $TARGET/loopback/$wwn
}

# Creates the kernel's fileio backstore $1 over file $2 (created with size
# $3 bytes if missing) with block size $4 (default 512), links it into
# tcm_loop and prints `sdX sgN`.
kernel_fileio_create() {
    [ -e "$2" ] || truncate -s "$3" "$2"
    dir=$TARGET/core/fileio_0/$1
    mkdir -p $dir
    echo "fd_dev_name=$2,fd_dev_size=$3" >$dir/control
    echo 1 >$dir/enable
    echo "${4:-512}" >$dir/attrib/block_size
    loop_link $dir "fileio-$1"
}

# Removes what kernel_fileio_create $1 made (not the file).
kernel_fileio_remove() {
    loop_unlink "fileio-$1"
    if [ -d $TARGET/core/fileio_0/$1 ]; then rmdir $TARGET/core/fileio_0/$1; fi
    rmdir $TARGET/core/fileio_0 2>/dev/null || true
}

# Starts `parastor tcmu --name NAME ARGS...` in the background and waits
# until it is ready (its --ready file is written). Its output goes to
# /tmp/vmtest/NAME.out and .err. Sets PARASTOR_DEVICES (the ready file: one
# `sdX sgN` line per path), PARASTOR_DISK and PARASTOR_SG (the first path's).
parastor_tcmu_start() {
    tag=$1
    shift
    ready=/tmp/vmtest/$tag.ready
    rm -f $ready
    parastor tcmu --name "$tag" --ready $ready "$@" \
        >/tmp/vmtest/$tag.out 2>/tmp/vmtest/$tag.err &
    echo $! >/tmp/vmtest/$tag.pid
    tries=300
    while [ ! -s $ready ]; do
        if ! kill -0 "$(cat /tmp/vmtest/$tag.pid)" 2>/dev/null; then
            cat /tmp/vmtest/$tag.err >&2
            rm -f /tmp/vmtest/$tag.pid
            fail "parastor tcmu --name $tag $* exited before it was ready"
        fi
        tries=$((tries - 1))
        [ $tries -gt 0 ] || fail "parastor tcmu --name $tag $* not ready after 30 s"
        usleep 100000
    done
    PARASTOR_DEVICES=$(cat $ready)
    set -- $PARASTOR_DEVICES
    PARASTOR_DISK=$1
    PARASTOR_SG=$2
    for dev in $PARASTOR_DEVICES; do
        wait_for_file /dev/$dev 10 || fail "parastor named /dev/$dev, which does not exist"
    done
    log "parastor tcmu $tag ready: $(echo $PARASTOR_DEVICES)"
}

# Stops the parastor started as NAME (SIGTERM: it drains and removes its
# backstores); fails unless it exits cleanly.
parastor_tcmu_stop() {
    pidfile=/tmp/vmtest/$1.pid
    [ -e $pidfile ] || return 0
    pid=$(cat $pidfile)
    rm -f $pidfile
    kill -TERM "$pid"
    status=0
    wait "$pid" || status=$?
    if [ $status -ne 0 ]; then
        cat /tmp/vmtest/$1.err >&2
        fail "parastor tcmu $1 exited with status $status after SIGTERM"
    fi
    log "parastor tcmu $1 stopped"
}

# Stops every parastor still running (for EXIT traps), without failing.
parastor_tcmu_stop_all() {
    for pidfile in /tmp/vmtest/*.pid; do
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        rm -f "$pidfile"
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    done
}

# Runs `cleanup` (a function the scenario defines) when the script ends,
# also when the guest's timeout sends SIGTERM.
cleanup_on_exit() {
    trap 'cleanup' EXIT
    trap 'exit 143' TERM INT
}

# Sends control command $2 to the FIFO of the parastor started as $1 (with
# `--control /tmp/vmtest/$1.ctl`) and waits for its one-line answer on
# stderr; fails unless the answer says `: ok`. Prints the answer.
parastor_control() {
    err=/tmp/vmtest/$1.err
    before=$(wc -l <$err)
    echo "$2" >/tmp/vmtest/$1.ctl
    tries=100
    while [ "$(wc -l <$err)" -le "$before" ]; do
        tries=$((tries - 1))
        [ $tries -gt 0 ] || fail "parastor $1: no answer to '$2' within 10 s"
        usleep 100000
    done
    answer=$(tail -n 1 $err)
    case $answer in
    *": ok"*) log "parastor $1: $answer" ;;
    *) fail "parastor $1: '$2' answered: $answer" ;;
    esac
}

# Runs libiscsi's SCSI conformance suite over SG_IO on /dev/$2 and keeps
# its output in /tmp/vmtest/conformance-$1.log and its exit status in
# .status. Several may run at once, in the background, each on its own LUN:
# the suite's time is mostly waiting on the target. A target that never
# answers a command would hang the suite: it is killed after CONF_TIMEOUT
# seconds (default 600).
conformance_exec() {
    status=0
    # Verbose mode names every test and its outcome.
    timeout -s KILL "${CONF_TIMEOUT:-600}" iscsi-test-cu --dataloss -v -t SCSI /dev/$2 \
        >/tmp/vmtest/conformance-$1.log 2>&1 || status=$?
    echo $status >/tmp/vmtest/conformance-$1.status
}

# Reports the run conformance_exec $1 made: one line per test
# (`passed|failed|skipped SUITE.TEST`) in /tmp/vmtest/conformance-$1.tests;
# on the console one line per suite, `SUITE-RESULT $1 SUITE passed=P
# failed=F skipped=S`, one `TEST-FAILED $1 SUITE.TEST` per failure and the
# output of each failed test (`FAILED-OUTPUT $1 ...`). Sets CONF_PASSED,
# CONF_FAILED, CONF_SKIPPED, CONF_TOTAL and CONF_CUNIT_PASSED (CUnit's own
# count: passed + skipped). Fails if the suite was killed, ran no tests, or
# the per-test lines do not add up to CUnit's count of tests run (the
# output format changed).
conformance_report() {
    backing=$1
    out=/tmp/vmtest/conformance-$backing.log
    tests=/tmp/vmtest/conformance-$backing.tests
    # The exit status is not the verdict (it says whether tests failed),
    # except for the timeout's kill.
    if [ "$(cat /tmp/vmtest/conformance-$backing.status)" = 137 ]; then
        tail -n 25 $out | sed "s/^/HUNG-OUTPUT $backing /"
        fail "iscsi-test-cu on $backing did not finish within ${CONF_TIMEOUT:-600} s;" \
            "last test started: $(grep '^  Test: ' $out | tail -n 1 | cut -c9-60)" \
            "in suite $(grep '^Suite: ' $out | tail -n 1 | cut -d' ' -f2)"
    fi
    conformance_parse <$out >$tests
    awk -v backing="$backing" '
        { suite = $2; sub(/\.[^.]*$/, "", suite); seen[suite] = 1; c[suite, $1]++ }
        END {
            for (s in seen)
                printf "SUITE-RESULT %s %s passed=%d failed=%d skipped=%d\n",
                    backing, s, c[s, "passed"], c[s, "failed"], c[s, "skipped"]
        }' $tests | sort
    sed -n "s/^failed /TEST-FAILED $backing /p" $tests
    conformance_failures <$out | sed "s/^/FAILED-OUTPUT $backing /"
    CONF_PASSED=$(grep -c '^passed ' $tests || true)
    CONF_FAILED=$(grep -c '^failed ' $tests || true)
    CONF_SKIPPED=$(grep -c '^skipped ' $tests || true)
    CONF_TOTAL=$((CONF_PASSED + CONF_FAILED + CONF_SKIPPED))
    CONF_CUNIT_PASSED=$((CONF_PASSED + CONF_SKIPPED))
    # CUnit's summary: `tests  TOTAL  RAN  PASSED  FAILED  INACTIVE`.
    ran=$(awk '$1 == "tests" && NF == 6 { print $3 }' $out)
    elapsed=$(awk '/^Elapsed time =/ { print $4 }' $out)
    log "conformance on $backing: $CONF_PASSED passed, $CONF_FAILED failed," \
        "$CONF_SKIPPED skipped (CUnit ran ${ran:-?} in ${elapsed:-?} s)"
    [ "${ran:-0}" -gt 0 ] || {
        tail -n 30 $out
        fail "iscsi-test-cu on $backing ran no tests"
    }
    [ "$ran" -eq "$CONF_TOTAL" ] ||
        fail "parsed $CONF_TOTAL test outcomes from $out but CUnit ran $ran"
}

# conformance_exec and conformance_report in one.
conformance_run() {
    conformance_exec "$1" "$2"
    conformance_report "$1"
}

# Reads iscsi-test-cu's verbose output on stdin and prints one line per
# test: `passed|failed|skipped SUITE.TEST`.
#
# CUnit prints `Suite: NAME`, then `  Test: NAME ...` followed by the test's
# own messages and its outcome, `passed` or `FAILED`, at the end of the
# test line or at the start of a line of its own. libiscsi marks a test it
# could not run (a command the target does not implement, say) with
# `[SKIPPED]` in its messages, and CUnit counts it as passed: here it is
# `skipped`. A `[FAILED]` message is not an outcome.
conformance_parse() {
    awk '
        function outcome(o) {
            if (test == "") return
            if (o == "passed" && skipped) o = "skipped"
            print o, suite "." test
            test = ""
        }
        /^Suite: / { test = ""; suite = $2; next }
        /^  Test: / {
            test = $2; skipped = 0
            if ($0 ~ /\[SKIPPED\]/) skipped = 1
            if ($0 ~ /\.\.\.passed$/) outcome("passed")
            else if ($0 ~ /\.\.\.FAILED$/) outcome("failed")
            next
        }
        test == "" { next }
        /\[SKIPPED\]/ { skipped = 1 }
        /^passed$/ { outcome("passed") }
        /^FAILED$/ { outcome("failed") }'
}

# Reads iscsi-test-cu's verbose output on stdin and prints the lines of
# each test that failed: its test line, its messages, CUnit's assertion
# lines (the first 20).
conformance_failures() {
    awk '
        function flush() { if (failed) printf "%s", buf; buf = ""; n = 0; failed = 0; inside = 0 }
        /^Suite: / { flush(); suite = $2; next }
        /^Run Summary/ { flush(); next }
        /^  Test: / { flush(); inside = 1 }
        !inside { next }
        /\.\.\.FAILED$/ || /^FAILED$/ { failed = 1 }
        n++ < 20 { buf = buf suite ": " $0 "\n" }
        END { flush() }'
}

# Compares the conformance outcomes of backing $2 with those of backing $1
# (the reference) test by test. Prints `REGRESSION $2 TEST ($1: X)` for each
# test the reference did not fail but $2 failed, and `GAIN $2 TEST` for each
# test $2 passed fully that the reference failed or skipped. Sets
# CONF_REGRESSIONS and CONF_GAINS.
conformance_compare() {
    # The directory is a variable for the host's tests of this function.
    results=${VMTEST_DIR:-/tmp/vmtest}
    awk -v ref="$1" -v new="$2" '
        FNR == NR { want[$2] = $1; next }
        {
            w = ($2 in want) ? want[$2] : "absent"
            if ($1 == "failed" && w != "failed") { print "REGRESSION", new, $2, "(" ref ": " w ")"; r++ }
            if ($1 == "passed" && w != "passed") { print "GAIN", new, $2, "(" ref ": " w ")"; g++ }
        }
        END { printf "COUNTS %d %d\n", r, g }' \
        $results/conformance-$1.tests $results/conformance-$2.tests >$results/compare-$2
    grep -v '^COUNTS ' $results/compare-$2 || true
    set -- $(grep '^COUNTS ' $results/compare-$2)
    CONF_REGRESSIONS=$2
    CONF_GAINS=$3
}

# Prints the decimal IOPS of a fio 4 KiB random-read job on /dev/$1 at
# queue depth $2 for $3 seconds (libaio, O_DIRECT).
fio_randread_iops() {
    fio --name=randread --filename=/dev/$1 --ioengine=libaio --direct=1 \
        --rw=randread --bs=4k --iodepth=$2 --runtime=$3 --time_based \
        --ramp_time=1 --norandommap --randrepeat=0 \
        --output-format=terse --terse-version=3 >/tmp/vmtest/fio.out
    # Terse v3: field 8 is the read IOPS.
    iops=$(awk -F';' 'NF > 8 { print $8; exit }' /tmp/vmtest/fio.out)
    [ -n "$iops" ] && [ "$iops" -gt 0 ] || {
        cat /tmp/vmtest/fio.out >&2
        fail "fio on /dev/$1 (QD$2) gave no IOPS"
    }
    echo "$iops"
}

# Sets $addr and $fn to the NVMe function (class 010802; the VM of the
# NVMe scenarios has exactly one).
nvme_function() {
    addr=
    for f in /sys/bus/pci/devices/*; do
        [ "$(cat $f/class)" = 0x010802 ] && addr=${f##*/}
    done
    [ -n "$addr" ] || fail "no NVMe function (class 0x010802) on the PCI bus"
    fn=/sys/bus/pci/devices/$addr
    log "NVMe function $addr, IOMMU group $(basename "$(readlink $fn/iommu_group)")"
}

# ns_dev NSID: the block device of namespace NSID (waits up to 10 s for
# the kernel to create it).
ns_dev() {
    tries=100
    while :; do
        for b in /sys/block/nvme*n*; do
            name=${b##*/}
            case $name in *c*) continue ;; esac # a multipath path, not the head
            [ -e $b/nsid ] && [ "$(cat $b/nsid)" = "$1" ] && [ -b /dev/$name ] && {
                echo /dev/$name
                return 0
            }
        done
        tries=$((tries - 1))
        [ $tries -gt 0 ] || return 1
        usleep 100000
    done
}

# bind DRIVER: rebinds the NVMe function ($addr) to DRIVER.
bind() {
    if [ -e $fn/driver ]; then
        echo $addr >$fn/driver/unbind
    fi
    echo "$1" >$fn/driver_override
    echo $addr >/sys/bus/pci/drivers_probe
    [ "$(basename "$(readlink $fn/driver)")" = "$1" ] || fail "$addr did not bind to $1"
    log "$addr bound to $1"
}
