// A GetEvents client built the way `tetra getevents` is: grpc-go and the Go protobuf
// runtime, every GetEventsResponse decoded into the generated types (built by
// bench/grpc_throughput.py from proto/tetragon with Debian's protoc plugins; nothing
// generated is committed). With -o json each event is also written as protojson, as
// `tetra getevents -o json` prints it (to /dev/null here). Prints one JSON line, the
// fields the Python bench client prints: count, first, last (CLOCK_MONOTONIC seconds),
// bytes (0: sizing each decoded message would walk it again, work tetra does not do),
// status, cpu_s.
//
// For the bench's comparison with a grpc-go server (bench/grpc_throughput.py --peer go):
// -cpuprofile writes a Go CPU profile (`go tool pprof -top`), -frames counts the HTTP/2 frames
// of the connection each way (frames.go; added to the JSON line as frames_in, frames_out),
// -dump writes every message received, length-prefixed, to a file, and -serve makes this
// binary that server instead (server.go), streaming such a file.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
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
// With -dump, each message's bytes are also written out, length-prefixed as on the wire.
type codec struct{ dump *bufio.Writer }

func (codec) Marshal(v interface{}) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }
func (c codec) Unmarshal(data []byte, v interface{}) error {
	if c.dump != nil {
		var prefix [5]byte
		binary.BigEndian.PutUint32(prefix[1:], uint32(len(data)))
		c.dump.Write(prefix[:])
		c.dump.Write(data)
	}
	return proto.Unmarshal(data, v.(proto.Message))
}
func (codec) Name() string { return "proto" }

func main() {
	addr := flag.String("server-address", "unix:///var/run/vigil/vigil.sock", "unix:///path or host:port")
	output := flag.String("o", "none", "none: decode only; json: also write protojson lines (to /dev/null)")
	cpuprofile := flag.String("cpuprofile", "", "write a Go CPU profile of the stream to this file")
	frames := flag.Bool("frames", false, "count the connection's HTTP/2 frames (frames_in, frames_out)")
	dump := flag.String("dump", "", "write every message received, length-prefixed, to this file")
	serve := flag.String("serve", "", "be the comparison server instead: listen on this unix socket path")
	messages := flag.String("messages", "", "-serve: the file of length-prefixed messages to stream")
	rate := flag.Float64("rate", 0, "-serve: messages per second, in 1 ms steps (0: as fast as they go)")
	decode := flag.Bool("decode", false, "no gRPC: decode the -messages file's messages as Recv does, and report")
	flag.Parse()
	if *serve != "" {
		os.Exit(serveMain(*serve, *messages, *rate))
	}
	if *decode {
		os.Exit(decodeMain(*messages))
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	var cd codec
	if *dump != "" {
		f, err := os.Create(*dump)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		cd.dump = bufio.NewWriterSize(f, 1<<20)
	}
	var counted *countingConn
	dialer := func(ctx context.Context, target string) (net.Conn, error) {
		var c net.Conn
		var err error
		if strings.HasPrefix(*addr, "unix://") {
			c, err = (&net.Dialer{}).DialContext(ctx, "unix", strings.TrimPrefix(*addr, "unix://"))
		} else {
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", *addr)
		}
		if err == nil && *frames && counted == nil {
			counted = newCountingConn(c)
			return counted, nil
		}
		return c, err
	}
	conn, err := grpc.Dial("passthrough:///vigil", grpc.WithInsecure(), grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.ForceCodec(cd)))
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
	if cd.dump != nil {
		if err := cd.dump.Flush(); err != nil {
			fmt.Fprintln(os.Stderr, "dump:", err)
			os.Exit(1)
		}
	}
	cpu := cpuSeconds()
	if *cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	// grpc-go names codes in CamelCase; the Python client prints grpcio's upper-case names
	names := map[string]string{"Unavailable": "UNAVAILABLE", "Canceled": "CANCELLED", "ok": "ok"}
	if n, ok := names[state]; ok {
		state = n
	}
	result := map[string]any{"count": count, "first": first, "last": last, "bytes": 0, "status": state,
		"cpu_s": cpu}
	if counted != nil {
		counted.mu.Lock()
		result["frames_in"], result["frames_out"] = counted.in.report(), counted.out.report()
		counted.mu.Unlock()
	}
	line, _ := json.Marshal(result)
	fmt.Println(string(line))
}

// decodeMain is the floor of the client's cost (-decode): each message of a -dump file decoded
// into a new GetEventsResponse, as the stream's Recv does, with no gRPC or HTTP/2 around it.
func decodeMain(messages string) int {
	msgs, err := readMessages(messages)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cpu0 := cpuSeconds()
	for _, m := range msgs {
		if err := proto.Unmarshal(m, &tetragon.GetEventsResponse{}); err != nil {
			fmt.Fprintln(os.Stderr, "decode:", err)
			return 1
		}
	}
	line, _ := json.Marshal(map[string]any{"count": len(msgs), "status": "ok", "cpu_s": cpuSeconds() - cpu0})
	fmt.Println(string(line))
	return 0
}
