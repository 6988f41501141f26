// A GetEvents client built the way `tetra getevents` is: grpc-go and the Go protobuf
// runtime, every GetEventsResponse decoded into the generated types (built by
// bench/grpc_throughput.py from proto/tetragon with Debian's protoc plugins; nothing
// generated is committed). With -o json each event is also written as protojson, as
// `tetra getevents -o json` prints it (to /dev/null here). Prints one JSON line, the
// fields the Python bench client prints: count, first, last (CLOCK_MONOTONIC seconds),
// bytes (0: sizing each decoded message would walk it again, work tetra does not do),
// status, cpu_s.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/cilium/tetragon/api/v1/tetragon"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// The proto codec over the Go protobuf runtime (APIv2): Debian 12's grpc-go 1.33 still
// decodes through github.com/golang/protobuf 1.3, which cannot read APIv2 generated types.
type codec struct{}

func (codec) Marshal(v interface{}) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }
func (codec) Unmarshal(data []byte, v interface{}) error {
	return proto.Unmarshal(data, v.(proto.Message))
}
func (codec) Name() string { return "proto" }

func main() {
	addr := flag.String("server-address", "unix:///var/run/vigil/vigil.sock", "unix:///path or host:port")
	output := flag.String("o", "none", "none: decode only; json: also write protojson lines (to /dev/null)")
	flag.Parse()

	dialer := func(ctx context.Context, target string) (net.Conn, error) {
		if strings.HasPrefix(*addr, "unix://") {
			return (&net.Dialer{}).DialContext(ctx, "unix", strings.TrimPrefix(*addr, "unix://"))
		}
		return (&net.Dialer{}).DialContext(ctx, "tcp", *addr)
	}
	conn, err := grpc.Dial("passthrough:///vigil", grpc.WithInsecure(), grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.ForceCodec(codec{})))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	stream, err := tetragon.NewFineGuidanceSensorsClient(conn).GetEvents(context.Background(), &tetragon.GetEventsRequest{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "GetEvents:", err)
		os.Exit(1)
	}
	var out *bufio.Writer
	if *output == "json" {
		devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		out = bufio.NewWriterSize(devnull, 1<<16)
	}
	count := 0
	first, last := 0.0, 0.0
	state := "ok"
	for {
		ev, err := stream.Recv()
		if err != nil {
			if err != io.EOF {
				state = status.Code(err).String()
			}
			break
		}
		last = monotonic()
		if count == 0 {
			first = last
		}
		count++
		if out != nil {
			b, err := protojson.Marshal(ev)
			if err != nil {
				fmt.Fprintln(os.Stderr, "protojson:", err)
				os.Exit(1)
			}
			out.Write(b)
			out.WriteByte('\n')
		}
	}
	if out != nil {
		out.Flush()
	}
	// grpc-go names codes in CamelCase; the Python client prints grpcio's upper-case names
	names := map[string]string{"Unavailable": "UNAVAILABLE", "Canceled": "CANCELLED", "ok": "ok"}
	if n, ok := names[state]; ok {
		state = n
	}
	line, _ := json.Marshal(map[string]any{"count": count, "first": first, "last": last, "bytes": 0,
		"status": state, "cpu_s": cpuSeconds()})
	fmt.Println(string(line))
}
