from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from accounts.permissions import role_required
from accounts.selectors import SESSION_ORGANISATION_KEY, memberships_for_user


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True


logout_view = auth_views.LogoutView.as_view()


@require_POST
@role_required()
def organisation_switch(request):
    wanted = request.POST.get("organisation_id", "")
    if wanted.isdigit() and memberships_for_user(user=request.user).filter(organisation_id=int(wanted)).exists():
        request.session[SESSION_ORGANISATION_KEY] = int(wanted)
    return redirect("core:home")
