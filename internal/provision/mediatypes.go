package provision

import "context"

func (s *setup) mediaTypes(ctx context.Context) error {
	msgs := []map[string]any{
		{"eventsource": 0, "recovery": 0, "subject": "Problem: {EVENT.NAME}",
			"message": "Problem started at {EVENT.TIME} on {EVENT.DATE}\nProblem name: {EVENT.NAME}\nHost: {HOST.NAME}\nSeverity: {EVENT.SEVERITY}\nOperational data: {EVENT.OPDATA}\nEscalation step: {ESC.HISTORY}\nOriginal problem ID: {EVENT.ID}\n"},
		{"eventsource": 0, "recovery": 1, "subject": "Resolved in {EVENT.DURATION}: {EVENT.NAME}",
			"message": "Problem has been resolved at {EVENT.RECOVERY.TIME} on {EVENT.RECOVERY.DATE}\nProblem name: {EVENT.NAME}\nProblem duration: {EVENT.DURATION}\nHost: {HOST.NAME}\nSeverity: {EVENT.SEVERITY}\nOriginal problem ID: {EVENT.ID}\n"},
		{"eventsource": 0, "recovery": 2, "subject": "Updated problem in {EVENT.AGE}: {EVENT.NAME}",
			"message": "{USER.FULLNAME} {EVENT.UPDATE.ACTION} problem at {EVENT.UPDATE.DATE} {EVENT.UPDATE.TIME}.\n{EVENT.UPDATE.MESSAGE}\n\nCurrent problem status is {EVENT.STATUS}, age is {EVENT.AGE}.\n"},
	}
	email := map[string]any{
		"name": EmailMediaType, "type": 0, "status": 0,
		"smtp_server": s.o.SMTPServer, "smtp_port": s.o.SMTPPort, "smtp_helo": s.o.SMTPHelo, "smtp_email": s.o.SMTPFrom,
		"smtp_security": 0, "smtp_authentication": 0, "content_type": 0,
		"description":       "KVM recovery ladder: email to the admins on call.",
		"message_templates": msgs,
	}
	chatStatus := 0
	if s.o.ChatURL == "" {
		chatStatus = 1
	}
	chat := map[string]any{
		"name": ChatMediaType, "type": 4, "status": chatStatus, "script": chatScript,
		"parameters": []map[string]any{
			{"name": "URL", "value": s.o.ChatURL},
			{"name": "To", "value": "{ALERT.SENDTO}"},
			{"name": "Subject", "value": "{ALERT.SUBJECT}"},
			{"name": "Message", "value": "{ALERT.MESSAGE}"},
		},
		"description":       "KVM recovery ladder: chat message through a webhook (POST of {\"text\",\"to\"} JSON to URL).",
		"message_templates": msgs,
	}
	sms := map[string]any{
		"name": SMSMediaType, "type": 1, "status": 0, "exec_path": s.o.SMSScript,
		"description":       "KVM recovery ladder: SMS through an alert script (phone, subject, message).",
		"message_templates": msgs,
	}
	// 6.4 turned the script arguments from one newline-separated string into a list.
	if s.params64 {
		sms["parameters"] = []map[string]any{
			{"sortorder": 0, "value": "{ALERT.SENDTO}"},
			{"sortorder": 1, "value": "{ALERT.SUBJECT}"},
			{"sortorder": 2, "value": "{ALERT.MESSAGE}"},
		}
	} else {
		sms["exec_params"] = "{ALERT.SENDTO}\n{ALERT.SUBJECT}\n{ALERT.MESSAGE}\n"
	}
	for _, m := range []map[string]any{email, chat, sms} {
		if _, err := s.ensure(ctx, object{kind: "media type", api: "mediatype", idField: "mediatypeid", name: m["name"].(string),
			desired: m, get: map[string]any{"selectMessageTemplates": "extend"}}); err != nil {
			return err
		}
	}
	return nil
}

const chatScript = `var p = JSON.parse(value);
if (!p.URL) {
    throw 'KVM chat: the media type parameter URL is empty';
}
var req = new HttpRequest();
req.addHeader('Content-Type: application/json');
var resp = req.post(p.URL, JSON.stringify({text: p.Subject + '\n' + p.Message, to: p.To}));
if (req.getStatus() < 200 || req.getStatus() >= 300) {
    throw 'KVM chat: ' + p.URL + ' answered HTTP ' + req.getStatus() + ': ' + resp;
}
return 'OK';`
