# make bench on a host without /dev/kvm: runs inside the nested machine
# (go run ./tests/nested -script tests/nested/bench.sh ...; see the Makefile).
# Both VMMs run there on the same emulated hardware, so the ratios compare
# them; the absolute times are those of an emulated CPU.
echo "bench: measured inside an emulated machine (QEMU TCG, $(nproc) vCPUs, $(free -m | awk '/Mem:/{print $2}') MiB, nested KVM for snapvmm): compare the ratios, not the absolute times"
exec snapvmm-bench -snapvmm /usr/bin/snapvmm -guest /repo/testdata/guests/fill $BENCHFLAGS
