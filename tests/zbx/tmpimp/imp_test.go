package imp

import (
	"context"
	"testing"

	"zabbix-agent2-plugin-kvm/conf/zabbix"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

func TestImp(t *testing.T) {
	for _, v := range []string{"7.0", "6.0"} {
		t.Run(v, func(t *testing.T) {
			s := zbx.Start(t, zbx.Options{Version: v})
			ctx := context.Background()
			o := zabbix.Options{User: "Admin", UserEmail: "a@b.c", HypervisorHost: "hv1", SMTPPort: s.SMTP.Port, SMTPServer: "127.0.0.1"}
			for i := 0; i < 2; i++ {
				r, err := zabbix.Setup(ctx, s.API, o)
				t.Logf("run %d: err %v\n%s", i, err, r)
			}
		})
	}
}
