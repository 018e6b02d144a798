from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.forms import ApiKeyCreateForm, MemberAddForm, MemberRolesForm, TeamCreateForm
from accounts.models import ApiKey, Membership
from accounts.permissions import role_required
from accounts.roles import Role
from accounts.selectors import (
    SESSION_ORGANISATION_KEY,
    api_key_get,
    api_keys_list,
    members_list,
    membership_get,
    memberships_for_user,
    teams_list,
)
from accounts.services import (
    api_key_create,
    api_key_revoke,
    member_add,
    membership_roles_change,
    team_create,
    user_login_record,
)
from core.errors import ApplicationError


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def form_valid(self, form):
        response = super().form_valid(form)
        user_login_record(user=form.get_user(), ip_address=self.request.META.get("REMOTE_ADDR"))
        return response


logout_view = auth_views.LogoutView.as_view()


@require_POST
@role_required()
def organisation_switch(request):
    wanted = request.POST.get("organisation_id", "")
    if wanted.isdigit() and memberships_for_user(user=request.user).filter(organisation_id=int(wanted)).exists():
        request.session[SESSION_ORGANISATION_KEY] = int(wanted)
    return redirect("core:home")


def _form_error(form, exc: ApplicationError) -> None:
    field = exc.param if exc.param in form.fields else None
    form.add_error(field, exc.message)


# --- API keys ------------------------------------------------------------------------------


@require_GET
@role_required(Role.ADMIN)
def api_key_list(request):
    keys = api_keys_list(organisation=request.org.organisation)
    return render(request, "accounts/api_key_list.html", {"keys": keys})


@never_cache
@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def api_key_create_view(request):
    """The secret is rendered in the POST response only: nothing can show it again later."""
    organisation = request.org.organisation
    form = ApiKeyCreateForm(request.POST if request.method == "POST" else None, organisation=organisation)
    if request.method == "POST" and form.is_valid():
        try:
            created = api_key_create(
                organisation=organisation, actor=request.org.actor, created_by=request.user, **form.cleaned_data
            )
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            return render(request, "accounts/api_key_created.html", {"key": created.api_key, "secret": created.secret})
    return render(request, "accounts/api_key_form.html", {"form": form})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def api_key_revoke_view(request, key_id: int):
    try:
        key = api_key_get(organisation=request.org.organisation, key_id=key_id)
    except ApiKey.DoesNotExist:
        raise Http404 from None
    if request.method == "POST":
        api_key_revoke(api_key=key, actor=request.org.actor)
        messages.success(
            request, f"API key {key.name} ({key.prefix}…) revoked. It stops working everywhere within 2 seconds."
        )
        return redirect("accounts:api_key_list")
    return render(request, "accounts/api_key_revoke.html", {"key": key})


# --- members and teams ---------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def member_list(request):
    organisation = request.org.organisation
    form = MemberAddForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            membership = member_add(organisation=organisation, actor=request.org.actor, **form.cleaned_data)
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"{membership.user.get_username()} added.")
            return redirect("accounts:member_list")
    members = members_list(organisation=organisation).prefetch_related("teams")
    return render(request, "accounts/member_list.html", {"members": members, "form": form, "roles": Role})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def member_edit(request, membership_id: int):
    try:
        membership = membership_get(organisation=request.org.organisation, membership_id=membership_id)
    except Membership.DoesNotExist:
        raise Http404 from None
    form = MemberRolesForm(request.POST if request.method == "POST" else None, initial={"roles": membership.roles})
    if request.method == "POST" and form.is_valid():
        try:
            membership_roles_change(membership=membership, roles=form.cleaned_data["roles"], actor=request.org.actor)
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"Roles of {membership.user.get_username()} saved.")
            return redirect("accounts:member_list")
    return render(request, "accounts/member_edit.html", {"membership": membership, "form": form})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def team_list(request):
    organisation = request.org.organisation
    form = TeamCreateForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            team = team_create(organisation=organisation, name=form.cleaned_data["name"], actor=request.org.actor)
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"Team {team.name} created.")
            return redirect("accounts:team_list")
    return render(request, "accounts/team_list.html", {"teams": teams_list(organisation=organisation), "form": form})
