# make bench on a host without /dev/kvm: runs inside the nested machine
# (go run ./tests/nested -script tests/nested/bench.sh ...; see the Makefile).
# Both VMMs run there on the same emulated hardware, so the ratios compare
# them; the absolute times are those of an emulated CPU.
echo "bench: measured inside an emulated machine (QEMU TCG, $(nproc) vCPUs, $(free -m | awk '/Mem:/{print $2}') MiB, nested KVM for snapvmm): compare the ratios, not the absolute times"
# snapvmm's vCPU threads stay on the last emulated CPU: TCG's nested SVM
# makes a guest triple-fault when KVM moves its vCPU between emulated CPUs
# (tests/nested -pin), and the live save's and lazy load's own threads
# keep the other CPU.
pin=""
if [ "$(nproc)" -ge 2 ]; then
	pin="-cpu-affinity $(($(nproc) - 1))"
fi
exec snapvmm-bench -snapvmm /usr/bin/snapvmm -guest /repo/testdata/guests/fill $pin $BENCHFLAGS
